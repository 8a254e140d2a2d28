use serde_json::{json, Value};

use super::*;
use crate::api::sse::{SseItem, SseParser};

fn chat(body: Value) -> Value {
    let r = request_to_chat(body.to_string().as_bytes(), None, &References::new()).unwrap();
    serde_json::from_slice(&r.chat).unwrap()
}

#[test]
fn string_input_instructions_and_parameters() {
    let c = chat(json!({
        "model": "m@price", "input": "hi", "instructions": "Be brief.", "max_output_tokens": 50,
        "temperature": 0.3, "top_p": 0.8, "parallel_tool_calls": false, "user": "u1", "stream": true,
        "metadata": {"k": "v"}, "reasoning": {"effort": "low"}, "truncation": "auto", "store": false
    }));
    assert_eq!(
        c,
        json!({
            "model": "m@price",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "max_tokens": 50, "temperature": 0.3, "top_p": 0.8, "parallel_tool_calls": false, "user": "u1",
            "stream": true, "stream_options": {"include_usage": true}
        })
    );
    let r = request_to_chat(br#"{"model":"m","input":"x","metadata":{"k":"v"},"store":false}"#, None, &References::new()).unwrap();
    assert!(!r.store && !r.stream);
    assert_eq!(r.echo.metadata, json!({"k": "v"}));
    assert_eq!(r.echo.tool_choice, json!("auto"));
    assert_eq!(r.echo.text, json!({"format": {"type": "text"}}));
    assert!(request_to_chat(br#"{"model":"m","input":"x"}"#, None, &References::new()).unwrap().store, "store defaults to true");
}

#[test]
fn input_items_become_chat_messages() {
    let c = chat(json!({"model": "m", "input": [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Look at"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"}
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Let me "}, {"type": "output_text", "text": "check."}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
        {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "one"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "two"}]},
        {"role": "user", "content": "so?"}
    ]}));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "system", "content": "Rules."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look at"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}}
            ]},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": "two"},
            {"role": "user", "content": "so?"}
        ])
    );
}

#[test]
fn tools_tool_choice_and_text_format() {
    let tools = json!([{"type": "function", "name": "f", "description": "does f", "parameters": {"type": "object"}, "strict": true}]);
    let c = chat(json!({"model": "m", "input": "x", "tools": tools, "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}}}));
    assert_eq!(c["tools"], json!([{"type": "function", "function": {"name": "f", "description": "does f", "parameters": {"type": "object"}, "strict": true}}]));
    assert_eq!(c["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
    assert_eq!(c["response_format"], json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}}));
    for choice in ["auto", "none", "required"] {
        assert_eq!(chat(json!({"model": "m", "input": "x", "tools": tools, "tool_choice": choice}))["tool_choice"], choice);
    }
    assert_eq!(chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}))["response_format"], json!({"type": "json_object"}));
    assert!(chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}}})).get("response_format").is_none());
}

#[test]
fn what_has_no_chat_form_is_refused_naming_it() {
    for (extra, named) in [
        (json!({"tools": [{"type": "web_search_preview"}]}), "web_search_preview"),
        (json!({"tools": [{"type": "file_search", "vector_store_ids": []}]}), "file_search"),
        (json!({"tool_choice": {"type": "web_search_preview"}}), "web_search_preview"),
        (json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}), "input_file"),
        (json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}), "file_id"),
        (json!({"background": true}), "background"),
        (json!({"conversation": "conv_1"}), "conversation"),
        (json!({"text": {"format": {"type": "grammar"}}}), "grammar"),
    ] {
        let mut body = json!({"model": "m", "input": "x"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        match request_to_chat(body.to_string().as_bytes(), None, &References::new()) {
            Err(e @ TranslateError::Unsupported { .. }) => assert!(e.to_string().contains(named), "{extra}: {e}"),
            other => panic!("{extra}: {other:?}"),
        }
    }
}

#[test]
fn malformed_requests_are_refused_naming_the_member() {
    for (body, param) in [
        ("[]", "body"),
        (r#"{"input":"x"}"#, "model"),
        (r#"{"model":3,"input":"x"}"#, "model"),
        (r#"{"model":"m"}"#, "input"),
        (r#"{"model":"m","input":[]}"#, "input"),
        (r#"{"model":"m","input":5}"#, "input"),
        (r#"{"model":"m","input":[{"role":"wizard","content":"x"}]}"#, "input[0].role"),
        (r#"{"model":"m","input":[{"type":"function_call","name":"f","arguments":"{}"}]}"#, "input[0].call_id"),
        (r#"{"model":"m","input":[{"type":"function_call_output","call_id":"c"}]}"#, "input[0].output"),
        (r#"{"model":"m","input":"x","max_output_tokens":0}"#, "max_output_tokens"),
        (r#"{"model":"m","input":"x","temperature":"hot"}"#, "temperature"),
        (r#"{"model":"m","input":"x","stream":"yes"}"#, "stream"),
        (r#"{"model":"m","input":"x","tools":[{"type":"function"}]}"#, "tools[0].name"),
        (r#"{"model":"m","input":"x","tool_choice":"sometimes"}"#, "tool_choice"),
        (r#"{"model":"m","input":"x","text":{"format":{"type":"json_schema","name":"n"}}}"#, "text.format.schema"),
    ] {
        match request_to_chat(body.as_bytes(), None, &References::new()) {
            Err(TranslateError::Invalid { param: p, .. }) => assert_eq!(p, param, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn a_follow_up_continues_the_kept_conversation() {
    let history = br#"[{"role":"user","content":"Remember 42"},{"role":"assistant","content":"OK"}]"#;
    let r = request_to_chat(br#"{"model":"m","input":"What was it?","instructions":"New rules.","previous_response_id":"resp_1"}"#, Some(history), &References::new()).unwrap();
    let c: Value = serde_json::from_slice(&r.chat).unwrap();
    assert_eq!(
        c["messages"],
        json!([
            {"role": "system", "content": "New rules."},
            {"role": "user", "content": "Remember 42"},
            {"role": "assistant", "content": "OK"},
            {"role": "user", "content": "What was it?"}
        ])
    );
    assert_eq!(r.previous_response_id.as_deref(), Some("resp_1"));
    let conv: Value = serde_json::from_slice(&r.conversation).unwrap();
    assert_eq!(conv.as_array().unwrap().len(), 3, "instructions are not kept: {conv}");
    // No new input: the history alone.
    assert!(request_to_chat(br#"{"model":"m","previous_response_id":"resp_1"}"#, Some(history), &References::new()).is_ok());
}

fn meta() -> Meta {
    let r = request_to_chat(br#"{"model":"m","input":"x","metadata":{"k":"v"}}"#, None, &References::new()).unwrap();
    Meta { id: "resp_abc".into(), created_at: 1_700_000_000, model: "llama".into(), echo: r.echo }
}

#[test]
fn answers_become_response_objects() {
    let body = json!({"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Calling.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}, "cost": 0.5, "cost_details": {"input": 0.1}}});
    let f = response_from_chat(body.to_string().as_bytes(), &meta(), b"[{\"role\":\"user\",\"content\":\"x\"}]").unwrap();
    let r: Value = serde_json::from_slice(&f.object).unwrap();
    assert_eq!((r["id"].as_str(), r["object"].as_str(), r["status"].as_str(), r["model"].as_str()), (Some("resp_abc"), Some("response"), Some("completed"), Some("llama")));
    assert_eq!(r["created_at"], 1_700_000_000);
    assert_eq!(
        r["output"],
        json!([
            {"type": "message", "id": "msg_abc", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Calling.", "annotations": [], "logprobs": []}]},
            {"type": "function_call", "id": "fc_abc_0", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}", "status": "completed"}
        ])
    );
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 4,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14, "cost": 0.5, "cost_details": {"input": 0.1}})
    );
    assert_eq!(r["metadata"], json!({"k": "v"}));
    let conv: Value = serde_json::from_slice(&f.conversation).unwrap();
    assert_eq!(
        conv,
        json!([{"role": "user", "content": "x"},
               {"role": "assistant", "content": "Calling.", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}])
    );
    for (finish, status, reason) in [("length", "incomplete", json!({"reason": "max_output_tokens"})), ("content_filter", "incomplete", json!({"reason": "content_filter"})), ("stop", "completed", Value::Null)] {
        let body = json!({"choices": [{"message": {"content": "a"}, "finish_reason": finish}]});
        let r: Value = serde_json::from_slice(&response_from_chat(body.to_string().as_bytes(), &meta(), b"[]").unwrap().object).unwrap();
        assert_eq!((r["status"].as_str(), &r["incomplete_details"]), (Some(status), &reason), "{finish}");
    }
    for bad in [&b"[]"[..], b"{}", b"nope"] {
        assert!(response_from_chat(bad, &meta(), b"[]").is_err());
    }
}

/// A recorded chat stream: role, text, a tool call in pieces, finish, usage, `[DONE]`.
fn recorded() -> String {
    let chunk = |delta: Value, finish: Value| json!({"id": "c", "object": "chat.completion.chunk", "model": "up", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    let events = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hel"}), Value::Null),
        chunk(json!({"content": "lo \u{e9}"}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "cost": 0.25}}),
    ];
    let mut s: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    s.push_str("data: [DONE]\n\n");
    s
}

fn convert(stream: &[u8], at: usize) -> Vec<u8> {
    let mut parser = SseParser::default();
    let mut items = Vec::new();
    parser.feed(&stream[..at], &mut items).unwrap();
    parser.feed(&stream[at..], &mut items).unwrap();
    let mut conv = ResponseStream::new(meta(), b"[]".to_vec());
    let mut out = Vec::new();
    for item in items {
        if let SseItem::Event { data, .. } = item {
            out.extend(if data == "[DONE]" { conv.done().0 } else { conv.chunk(&data) });
        }
    }
    out
}

#[test]
fn a_stream_converts_the_same_at_every_split_in_the_responses_grammar() {
    let s = recorded();
    let whole = convert(s.as_bytes(), 0);
    for at in 1..s.len() {
        assert_eq!(convert(s.as_bytes(), at), whole, "split at {at}");
    }
    let mut parser = SseParser::default();
    let mut items = Vec::new();
    parser.feed(&whole, &mut items).unwrap();
    let events: Vec<(String, Value)> = items
        .into_iter()
        .filter_map(|i| match i {
            SseItem::Event { event, data } => Some((event.unwrap_or_default(), serde_json::from_str(&data).unwrap())),
            SseItem::Comment(_) => None,
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.content_part.added",
            "response.output_text.delta", "response.output_text.delta",
            "response.output_text.done", "response.content_part.done", "response.output_item.done",
            "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!((data["type"].as_str(), data["sequence_number"].as_u64()), (Some(name.as_str()), Some(i as u64)));
    }
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert_eq!(events[4].1["delta"], "Hel");
    assert_eq!(events[4].1["item_id"], "msg_abc");
    assert_eq!(events[6].1["text"], "Hello \u{e9}");
    assert_eq!(events[9].1["item"]["call_id"], "call_1");
    assert_eq!(events[9].1["output_index"], 1);
    assert_eq!(events[12].1["arguments"], "{\"a\":1}");
    assert_eq!(events[13].1["item"]["status"], "completed");
    let done = &events[14].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["usage"]["cost"], 0.25);
    assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
}

#[test]
fn a_cut_or_failing_stream_still_speaks_the_grammar() {
    let mut conv = ResponseStream::new(meta(), b"[]".to_vec());
    let (out, f) = conv.done();
    let text = String::from_utf8(out).unwrap();
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names, ["response.created", "response.in_progress", "response.completed"]);
    assert!(!f.object.is_empty());
    let mut conv = ResponseStream::new(meta(), b"[]".to_vec());
    let _ = conv.chunk(r#"{"choices":[{"delta":{"content":"a"}}]}"#);
    let err = String::from_utf8(conv.error("broke", "upstream_stream_interrupted")).unwrap();
    let names: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names, ["error", "response.failed"]);
    assert!(err.contains("\"sequence_number\"") && err.contains("\"code\":\"upstream_stream_interrupted\""), "{err}");
    assert!(conv.chunk("not json").is_empty());
}

#[test]
fn item_references_are_the_kept_items_they_name() {
    let mut refs = References::new();
    refs.insert("msg_x".into(), json!({"type": "message", "id": "msg_x", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": "Earlier.", "annotations": []}]}).to_string());
    refs.insert("fc_x_0".into(), json!({"type": "function_call", "id": "fc_x_0", "call_id": "call_9", "name": "f", "arguments": "{}", "status": "completed"}).to_string());
    let body = json!({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"type": "item_reference", "id": "msg_x"},
        {"type": "item_reference", "id": "fc_x_0"},
        {"type": "function_call_output", "call_id": "call_9", "output": "r"}
    ]});
    assert_eq!(referenced_ids(body.to_string().as_bytes()), ["msg_x", "fc_x_0"]);
    let r = request_to_chat(body.to_string().as_bytes(), None, &refs).unwrap();
    let c: Value = serde_json::from_slice(&r.chat).unwrap();
    assert_eq!(
        c["messages"],
        json!([
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "Earlier.", "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "r"}
        ])
    );
    let unknown = json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_gone"}]});
    match request_to_chat(unknown.to_string().as_bytes(), None, &refs) {
        Err(TranslateError::Invalid { param, message }) => assert!(param == "input[0].id" && message.contains("msg_gone"), "{message}"),
        other => panic!("{other:?}"),
    }
}
