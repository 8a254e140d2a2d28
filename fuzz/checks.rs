// The properties the fuzz targets check, shared with `tests/fuzz_regressions.rs`, which runs
// them over the seeds and every input a fuzzing run ever found (`fuzz/regressions/`), so a
// finding stays fixed in the ordinary test suite.

use joule::api::chat::{classify, inspect, read_doc};
use joule::api::sse::{encode, SseItem, SseParser};
use joule::pricing::cost::{insert_cost, remove_cost, Cost};
use joule::translate::anthropic::inbound::{message_from_chat, request_to_chat, with_model, EventStream};
use joule::translate::anthropic::{request_to_anthropic, response_from_anthropic, StreamConverter};
use joule::translate::responses::{self, References, ResponseStream};

/// The request inspector and the upstream body rewrite, on any bytes a client sends. Never
/// panics; a body it accepts is rewritten into valid JSON naming the upstream model, with
/// `stream_options.include_usage` on for streams, which it accepts again.
pub fn check_inspect(data: &[u8]) {
    let Ok(req) = inspect(data) else { return };
    let out = req.upstream_body(data, "up/\"model\"");
    let again = inspect(&out).expect("the rewrite is itself acceptable");
    assert_eq!(again.stream, req.stream);
    assert_eq!(again.model, "up/\"model\"");
    // JSON allows numbers a tree cannot hold (`1e999999`); members joule does not read pass
    // through as sent, so the rewrite is checked as a tree only when the body is one.
    if !is_tree(data) {
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!("rewrite of an accepted body is not JSON ({e}): {:?}", String::from_utf8_lossy(&out))
    });
    assert_eq!(v["model"], "up/\"model\"");
    if req.stream {
        assert_eq!(v["stream_options"]["include_usage"], true, "{}", String::from_utf8_lossy(&out));
    }
}

fn is_tree(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data).is_ok()
}

const CAP: usize = 4096;

fn parse(chunks: &[&[u8]]) -> Option<Vec<SseItem>> {
    let mut p = SseParser::new(CAP);
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, &mut out).ok()?;
    }
    p.finish(&mut out);
    Some(out)
}

/// The SSE parser and the chunk classifier, on any bytes an upstream streams (the first byte
/// picks a split point). Never panics; where the whole input parses, the split input parses
/// to the same items; each item survives encode → parse unchanged.
pub fn check_sse(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else { return };
    let whole = parse(&[input]);
    let cut = usize::from(seed) * input.len() / 256;
    let split = parse(&[&input[..cut], &input[cut..]]);
    if let (Some(w), Some(s)) = (&whole, &split) {
        assert_eq!(w, s, "split at {cut}");
    }
    for item in whole.iter().flatten() {
        if let SseItem::Event { data, .. } = item {
            let _ = classify(data);
        }
        let back = parse(&[&encode(item)]).expect("an encoded item parses");
        assert_eq!(back.as_slice(), std::slice::from_ref(item));
    }
}

/// What joule reads of and writes into an upstream's JSON answer: the usage reader and the
/// `usage.cost` insertion and removal. Never panics; a rewrite is valid JSON with joule's cost
/// in place (or none at all), and reads the same usage as the original.
pub fn check_upstream_doc(data: &[u8]) {
    let doc = read_doc(data);
    let cost = Cost { total: 1.5, input: 0.5, output: 1.0, energy: 0.25, routing_fee: 0.0, cache_read: Some(0.125), cache_write: None, currency: "USD" };
    let tree = is_tree(data);
    if let Some(out) = insert_cost(data, &cost) {
        assert_eq!(read_doc(&out).map(|d| d.usage), doc.map(|d| d.usage));
        if !tree {
            return;
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)));
        assert_eq!(v["usage"]["cost"], 1.5, "{}", String::from_utf8_lossy(&out));
        assert_eq!(v["usage"]["cost_details"]["cache_read"], 0.125, "{}", String::from_utf8_lossy(&out));
    }
    if !tree {
        return;
    }
    if let Some(out) = remove_cost(data) {
        let v: serde_json::Value =
            serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)));
        assert!(v["usage"].get("cost").is_none() && v["usage"].get("cost_details").is_none(), "{}", String::from_utf8_lossy(&out));
    }
}

/// The Anthropic converters on any bytes: a request joule accepts either translates to JSON
/// (a tree when the input is one) or is refused as the client's error; any upstream answer
/// converts to JSON or is refused; any sequence of stream events (the input split on
/// newlines, `name:data`) yields JSON chunks or `[DONE]`, or an error — never a panic.
/// (Upstream strings and numbers pass through as written, so a chunk is held to be a JSON
/// tree only when the events were.)
pub fn check_anthropic(data: &[u8]) {
    if inspect(data).is_ok() {
        match request_to_anthropic(data, "claude-x", 1024) {
            Ok(r) if is_tree(data) => {
                let v: serde_json::Value = serde_json::from_slice(&r.body)
                    .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&r.body)));
                assert_eq!(v["model"], "claude-x");
                assert!(v["max_tokens"].is_u64(), "{v}");
            }
            Ok(_) => {}
            Err(e) => assert_eq!(e.status(), 400, "{e}"),
        }
    }
    if let Ok(out) = response_from_anthropic(data, None, 0) {
        let v: serde_json::Value =
            serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)));
        assert_eq!(v["object"], "chat.completion");
    }
    let mut conv = StreamConverter::new(0, None);
    // Strings and numbers pass through as the upstream wrote them (a lone surrogate escape, a
    // number beyond f64), as on OpenAI routes; chunks are checked as trees while every event
    // so far was one.
    let mut trees = true;
    for line in String::from_utf8_lossy(data).lines() {
        let (name, payload) = line.split_once(':').map_or((None, line), |(n, d)| (Some(n), d));
        trees = trees && serde_json::from_str::<serde_json::Value>(payload).is_ok();
        match conv.event(name, payload) {
            Ok(chunks) => {
                for c in chunks {
                    assert!(!trees || c == "[DONE]" || serde_json::from_str::<serde_json::Value>(&c).is_ok(), "{c}");
                }
            }
            Err(_) => break,
        }
    }
}

/// The inbound Anthropic converters (`/v1/messages`) on any bytes: an accepted Messages
/// request yields a chat body that is JSON (a tree when the input is one) which the chat
/// inspector accepts or refuses as the client's 400, and whose `model` replacement keeps the
/// client's body valid; any chat answer converts to a Messages answer or is refused; any
/// sequence of chat chunks (the input's lines) converts to SSE events whose data is JSON.
pub fn check_messages(data: &[u8]) {
    let tree = is_tree(data);
    if let Ok(inbound) = request_to_chat(data) {
        if tree {
            let v: serde_json::Value = serde_json::from_slice(&inbound.chat)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&inbound.chat)));
            assert!(v["model"].is_string(), "{v}");
            let replaced = with_model(data, &inbound.model_span, "claude-\"x\"");
            let r: serde_json::Value = serde_json::from_slice(&replaced).expect("replaced body is JSON");
            assert_eq!(r["model"], "claude-\"x\"");
        }
        if let Err(e) = inspect(&inbound.chat) {
            assert_eq!(e.status(), 400, "{e:?}");
        }
    }
    if let Ok(out) = message_from_chat(data, "m") {
        let v: serde_json::Value =
            serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)));
        assert_eq!(v["type"], "message");
        assert!(v["content"].is_array() && v["usage"]["output_tokens"].is_u64(), "{v}");
    }
    let mut conv = EventStream::new("m");
    let mut out = Vec::new();
    let mut trees = true;
    for line in String::from_utf8_lossy(data).lines() {
        trees = trees && serde_json::from_str::<serde_json::Value>(line).is_ok();
        out.extend(conv.chunk(line));
    }
    out.extend(conv.done());
    let mut parser = SseParser::default();
    let mut items = Vec::new();
    parser.feed(&out, &mut items).expect("the converter writes SSE");
    for item in items {
        if let SseItem::Event { event, data } = item {
            assert!(event.is_some(), "every event is named");
            assert!(!trees || serde_json::from_str::<serde_json::Value>(&data).is_ok(), "{data}");
        }
    }
}

/// The Responses API converters on any bytes: an accepted request yields a chat body that is
/// JSON (a tree when the input is one) which the chat inspector accepts or refuses as a 400;
/// any chat answer converts to a response object or is refused; any chunk sequence (the
/// input's lines) converts to named events whose data is JSON with sequence numbers 0, 1, 2…
pub fn check_responses(data: &[u8]) {
    let tree = is_tree(data);
    if let Ok(r) = responses::request_to_chat(data, None, &References::new()) {
        if tree {
            let v: serde_json::Value = serde_json::from_slice(&r.chat)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&r.chat)));
            assert!(v["messages"].is_array(), "{v}");
            let conv: serde_json::Value = serde_json::from_slice(&r.conversation).expect("the conversation is JSON");
            assert!(conv.is_array());
        }
        if let Err(e) = inspect(&r.chat) {
            assert_eq!(e.status(), 400, "{e:?}");
        }
        let meta = responses::Meta { id: "resp_f".into(), created_at: 0, model: "m".into(), echo: r.echo.clone() };
        if let Ok(f) = responses::response_from_chat(data, &meta, &r.conversation) {
            let v: serde_json::Value = serde_json::from_slice(&f.object).expect("a response object");
            assert_eq!(v["object"], "response");
        }
    }
    let meta = responses::Meta { id: "resp_f".into(), created_at: 0, model: "m".into(), echo: Default::default() };
    if let Ok(f) = responses::response_from_chat(data, &meta, b"[]") {
        let v: serde_json::Value = serde_json::from_slice(&f.object).expect("a response object");
        assert_eq!(v["object"], "response");
        let c: serde_json::Value = serde_json::from_slice(&f.conversation).expect("the conversation is JSON");
        assert!(c.is_array());
    }
    let mut conv = ResponseStream::new(meta, b"[]".to_vec());
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(data).lines() {
        out.extend(conv.chunk(line));
    }
    out.extend(conv.done().0);
    let mut parser = SseParser::default();
    let mut items = Vec::new();
    parser.feed(&out, &mut items).expect("the converter writes SSE");
    let mut seq = 0;
    for item in items {
        if let SseItem::Event { event, data } = item {
            let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
            assert_eq!(v["type"].as_str(), event.as_deref());
            assert_eq!(v["sequence_number"], seq);
            seq += 1;
        }
    }
}
