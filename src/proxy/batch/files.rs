//! `/v1/files`: upload (multipart, `purpose=batch`, checked line by line before it is
//! stored), list, retrieve, content and delete — the owner's files only.

use bytes::Bytes;

use super::{objects, owner, page, store_error, BatchService, Page};
use crate::access::Principal;
use crate::api::error::ApiError;
use crate::batch::input::{self, InputError};
use crate::batch::{FileObject, PURPOSE_BATCH};
use crate::proxy::body::read_or_refuse;
use crate::proxy::{send_error, ClientApi, Downstream, DownstreamError, Gateway, Record, RequestHead, World};
use crate::routing::tags;

/// Most files one list answers.
pub const MAX_LIST: u32 = 10_000;
/// Multipart framing and the `purpose` field beside the file, bytes.
const FORM_OVERHEAD: usize = 64 * 1024;

/// Whether `model` (tags included) may be used by `principal`, or why not.
pub fn model_check(gw: &Gateway, world: &World, principal: &Principal, model: &str) -> Result<(), String> {
    let (base, strategies) = tags::parse_model(model).map_err(|e| e.to_string())?;
    if world.catalog.model(base).is_none() {
        return Err(format!("model `{}` does not exist (GET /v1/models lists the models)", base.chars().take(200).collect::<String>()));
    }
    if !principal.may_use(base) {
        return Err(format!("this project may not use model `{base}`"));
    }
    if let Some(s) = strategies {
        gw.strategies.current().check(&s).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The uploaded form: the file's name and bytes, and `purpose`.
struct Form {
    filename: String,
    content: Bytes,
    purpose: String,
}

async fn form(body: Vec<u8>, content_type: Option<&str>) -> Result<Form, ApiError> {
    let bad = |m: String| ApiError::invalid(m, None);
    let boundary = content_type
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| bad("Upload the file as multipart/form-data with the fields `file` and `purpose`.".into()))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(body)) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let (mut file, mut purpose) = (None, None);
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(bad(format!("The multipart body is malformed: {e}."))),
        };
        match field.name() {
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").chars().take(255).collect::<String>();
                let bytes = field.bytes().await.map_err(|e| bad(format!("The `file` field could not be read: {e}.")))?;
                file = Some((name, bytes));
            }
            Some("purpose") => {
                let text = field.text().await.map_err(|e| bad(format!("The `purpose` field could not be read: {e}.")))?;
                purpose = Some(text.chars().take(100).collect::<String>());
            }
            // Other fields (`expires_after[…]`) are accepted and ignored.
            _ => {}
        }
    }
    let (filename, content) = file.ok_or_else(|| ApiError::InvalidRequest {
        message: "The form has no `file` field.".into(),
        param: Some("file"),
        code: None,
    })?;
    let purpose = purpose.ok_or_else(|| ApiError::InvalidRequest { message: "The form has no `purpose` field.".into(), param: Some("purpose"), code: None })?;
    Ok(Form { filename, content, purpose })
}

/// `POST /v1/files`.
///
/// # Errors
/// Only downstream I/O failures; a refused upload is a 400 naming the line and reason (413
/// for a body over the size limit).
pub async fn upload(
    gw: &Gateway,
    world: &World,
    svc: &BatchService,
    principal: &Principal,
    head: &RequestHead,
    io: &mut dyn Downstream,
    rec: &mut Record,
) -> Result<(), DownstreamError> {
    let limits = &svc.settings.input;
    // Large files take their time: at least ten minutes, or the configured body timeout.
    let timeout = world.limits.client_body_timeout.max(std::time::Duration::from_secs(600));
    let Some(body) = read_or_refuse(ClientApi::OpenAi, io, rec, head.content_length, limits.max_bytes + FORM_OVERHEAD, timeout).await? else {
        return Ok(());
    };
    let result = async {
        let form = form(body, head.content_type.as_deref()).await?;
        if form.purpose != PURPOSE_BATCH {
            return Err(ApiError::InvalidRequest {
                message: format!("`purpose` must be \"batch\" (got \"{}\"); joule stores files for the batch API only.", form.purpose),
                param: Some("purpose"),
                code: None,
            });
        }
        let checked = input::check(&form.content, limits, &|m| model_check(gw, world, principal, m)).map_err(|e| {
            let code = match e {
                InputError::TooLarge { .. } | InputError::TooManyLines { .. } => "file_too_large",
                _ => "invalid_file",
            };
            ApiError::InvalidRequest { message: format!("The file was not accepted: {e}."), param: Some("file"), code: Some(code) }
        })?;
        let content = String::from_utf8(form.content.to_vec()).map_err(|_| ApiError::invalid("The file is not UTF-8 text.", Some("file")))?;
        let file = FileObject {
            id: format!("file-{}", crate::access::random_hex(12)),
            owner: owner(principal),
            purpose: PURPOSE_BATCH.into(),
            filename: form.filename,
            bytes: content.len() as i64,
            created_ms: crate::clock::now_ms(),
            lines: checked.lines.len() as i64,
        };
        svc.store.insert_file(&file, content).await.map_err(store_error)?;
        Ok(serde_json::to_vec(&objects::file(&file)).unwrap_or_default())
    }
    .await;
    match result {
        Ok(body) => crate::proxy::send_json(io, rec, body).await,
        Err(e) => send_error(io, rec, &e).await,
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::ResourceNotFound { message: format!("No file with id `{}`.", id.chars().take(100).collect::<String>()) }
}

/// `GET /v1/files` (`purpose`, `limit` ≤ 10 000, default 10 000, `after`, `order` asc|desc).
///
/// # Errors
/// 400 for bad parameters; 503 when the store is unreachable.
pub async fn list(svc: &BatchService, principal: &Principal, head: &RequestHead) -> Result<Vec<u8>, ApiError> {
    let Page { limit, after, order, purpose } = page(head, MAX_LIST, MAX_LIST)?;
    let ascending = match order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(ApiError::InvalidRequest { message: "`order` must be asc or desc.".into(), param: Some("order"), code: None }),
    };
    let mut files = svc.store.files(&owner(principal), purpose.as_deref(), after.as_deref(), limit + 1, ascending).await.map_err(store_error)?;
    let more = files.len() > limit as usize;
    files.truncate(limit as usize);
    Ok(serde_json::to_vec(&objects::list(files.iter().map(objects::file).collect(), more)).unwrap_or_default())
}

/// `GET /v1/files/{id}`.
///
/// # Errors
/// 404 for an unknown file or another owner's.
pub async fn get(svc: &BatchService, principal: &Principal, id: &str) -> Result<Vec<u8>, ApiError> {
    let f = svc.store.file(&owner(principal), id).await.map_err(store_error)?.ok_or_else(|| not_found(id))?;
    Ok(serde_json::to_vec(&objects::file(&f)).unwrap_or_default())
}

/// `DELETE /v1/files/{id}`.
///
/// # Errors
/// 404 for an unknown file or another owner's.
pub async fn delete(svc: &BatchService, principal: &Principal, id: &str) -> Result<Vec<u8>, ApiError> {
    if !svc.store.delete_file(&owner(principal), id).await.map_err(store_error)? {
        return Err(not_found(id));
    }
    Ok(serde_json::to_vec(&serde_json::json!({"id": id, "object": "file", "deleted": true})).unwrap_or_default())
}

/// `GET /v1/files/{id}/content`: the file as stored (input files) or written (output and
/// error files), `application/jsonl`.
///
/// # Errors
/// Only downstream I/O failures.
pub async fn content(svc: &BatchService, principal: &Principal, id: &str, io: &mut dyn Downstream, rec: &mut Record) -> Result<(), DownstreamError> {
    let text = match svc.store.file_content(&owner(principal), id).await {
        Ok(Some(t)) => t,
        Ok(None) => return send_error(io, rec, &not_found(id)).await,
        Err(e) => return send_error(io, rec, &store_error(e)).await,
    };
    rec.status = 200;
    let headers = vec![("content-type", "application/jsonl".to_string()), ("x-request-id", rec.request_id.clone())];
    io.send_whole(200, headers, Bytes::from(text)).await
}
