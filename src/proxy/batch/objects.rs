//! The Batch API's JSON objects in OpenAI's shapes: the file object, the batch object (plus
//! joule's `joule` member: plan, data centers, cost so far, the saving against running at
//! submission), lists, and the output and error file lines.

use serde_json::{json, Value};

use super::PlanView;
use crate::batch::{BatchRecord, FileObject};

/// Unix seconds of a unix-ms time.
fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// A file object.
pub fn file(f: &FileObject) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": secs(f.created_ms),
        "expires_at": null,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
    })
}

/// The window as the client gave it back: `24h`, or the exact seconds' largest unit.
pub fn window_text(s: i64) -> String {
    match s {
        s if s % 86_400 == 0 && s != 86_400 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn round(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// A batch object. `plan` is this instance's latest plan of it, if any.
pub fn batch(b: &BatchRecord, plan: Option<&PlanView>, discount: f64) -> Value {
    let at = |v: Option<i64>| v.map(secs);
    let c = &b.counts;
    let finished = (c.completed + c.failed) as f64;
    // The reference: every line at the best price when the batch was submitted.
    let per_line = if c.total > 0 { b.estimate_at_submission / c.total as f64 } else { 0.0 };
    let saving_so_far = per_line * finished - b.cost;
    let estimated_total = plan.map(|p| b.cost + p.remaining_cost);
    let metadata: Value = b.metadata.as_deref().and_then(|m| serde_json::from_str(m).ok()).unwrap_or(Value::Null);
    let errors: Value = b.errors.as_deref().and_then(|m| serde_json::from_str(m).ok()).unwrap_or(Value::Null);
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": window_text(b.window_s),
        "status": b.status.as_str(),
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": secs(b.created_ms),
        "in_progress_at": at(b.in_progress_ms),
        "expires_at": secs(b.expires_ms),
        "finalizing_at": at(b.finalizing_ms),
        "completed_at": at(b.completed_ms),
        "failed_at": at(b.failed_ms),
        "expired_at": at(b.expired_ms),
        "cancelling_at": at(b.cancelling_ms),
        "cancelled_at": at(b.cancelled_ms),
        "request_counts": {"total": c.total, "completed": c.completed, "failed": c.failed},
        "metadata": metadata,
        "joule": {
            "planned_start_at": at(b.planned_start_ms),
            "behind_schedule": plan.is_some_and(|p| p.behind),
            "in_flight": c.in_flight,
            "data_centers": b.sites,
            "cost_usd": round(b.cost),
            "energy_cost_usd": round(b.energy_cost),
            "discount": discount,
            "estimated_cost_at_submission_usd": round(b.estimate_at_submission),
            "estimated_cost_usd": estimated_total.map(round),
            "estimated_saving_usd": estimated_total.map(|t| round(b.estimate_at_submission - t)),
            "saving_so_far_usd": round(saving_so_far),
        },
    })
}

/// A list page in OpenAI's shape.
pub fn list(data: Vec<Value>, has_more: bool) -> Value {
    let id = |v: Option<&Value>| v.and_then(|v| v.get("id")).cloned().unwrap_or(Value::Null);
    json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": has_more,
        "data": data,
    })
}

/// An output-file line: the answer a line got (2xx or not).
pub fn answer_line(request_id: &str, custom_id: &str, status: u16, body: Value) -> String {
    let error = if (200..300).contains(&status) {
        Value::Null
    } else {
        body.get("error").map_or_else(|| json!({"code": "request_failed", "message": format!("HTTP {status}")}), |e| {
            json!({"code": e.get("code").cloned().unwrap_or(Value::Null), "message": e.get("message").cloned().unwrap_or(Value::Null)})
        })
    };
    json!({
        "id": format!("batch_req_{request_id}"),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": error,
    })
    .to_string()
}

/// An error-file line for a line that never got an answer (`batch_expired`,
/// `batch_cancelled`, `batch_failed`).
pub fn unanswered_line(batch_id: &str, line: i64, custom_id: &str, code: &str, message: &str) -> String {
    json!({
        "id": format!("batch_req_{batch_id}_{line}"),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_print_in_their_largest_unit() {
        assert_eq!(window_text(86_400), "24h");
        assert_eq!(window_text(3600), "1h");
        assert_eq!(window_text(2 * 86_400), "2d");
        assert_eq!(window_text(5400), "90m");
        assert_eq!(window_text(3601), "3601s");
    }

    #[test]
    fn error_answers_carry_the_error_object() {
        let l: Value = serde_json::from_str(&answer_line("r1", "a", 400, json!({"error": {"message": "bad", "code": "x"}}))).unwrap();
        assert_eq!(l["error"]["message"], "bad");
        assert_eq!(l["response"]["status_code"], 400);
        let ok: Value = serde_json::from_str(&answer_line("r2", "b", 200, json!({"id": "c"}))).unwrap();
        assert!(ok["error"].is_null());
        assert_eq!(ok["id"], "batch_req_r2");
    }
}
