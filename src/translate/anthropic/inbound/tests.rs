use serde_json::{json, Value};

use super::*;
use crate::api::sse::{SseItem, SseParser};

fn chat(body: Value) -> Value {
    let inbound = request_to_chat(body.to_string().as_bytes()).unwrap();
    assert!(inbound.unsupported.is_none(), "{:?}", inbound.unsupported);
    serde_json::from_slice(&inbound.chat).unwrap()
}

fn base(extra: Value) -> Value {
    let mut b = json!({"model": "m@price", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    b
}

#[test]
fn plain_request_maps_model_messages_and_parameters() {
    let c = chat(base(json!({
        "system": "Be brief.", "temperature": 0.5, "top_p": 0.9, "top_k": 40,
        "stop_sequences": ["END", "STOP"], "metadata": {"user_id": "u-1"}, "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 2000}, "service_tier": "auto"
    })));
    assert_eq!(
        c,
        json!({
            "model": "m@price",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
            "stream": true, "stream_options": {"include_usage": true},
            "stop": ["END", "STOP"], "user": "u-1"
        })
    );
    // Not streaming: no stream members at all.
    let c = chat(base(json!({"stream": false})));
    assert!(c.get("stream").is_none() && c.get("stream_options").is_none(), "{c}");
}

#[test]
fn system_blocks_are_joined_and_cache_control_dropped() {
    let c = chat(base(json!({"system": [
        {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Two."}
    ]})));
    assert_eq!(c["messages"][0], json!({"role": "system", "content": "One.\nTwo."}));
    let c = chat(base(json!({"system": []})));
    assert_eq!(c["messages"][0]["role"], "user", "an empty system prompt adds no message");
}

#[test]
fn user_blocks_become_tool_messages_then_parts() {
    let c = chat(base(json!({"messages": [
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me "},
            {"type": "text", "text": "look."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x\u{e9}"}},
            {"type": "tool_use", "id": "toolu_2", "name": "noargs", "input": {}}
        ]},
        {"role": "user", "content": [
            {"type": "text", "text": "Here:", "cache_control": {"type": "ephemeral"}},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
             "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
        ]}
    ]})));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\u{e9}\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "noargs", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "found"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "a\nb"},
            {"role": "user", "content": [
                {"type": "text", "text": "Here:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ]}
        ])
    );
}

#[test]
fn only_tool_results_leave_no_empty_user_message_and_assistant_without_text_is_null() {
    let c = chat(base(json!({"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
    ]})));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "t", "content": ""}
        ])
    );
}

#[test]
fn tools_and_every_tool_choice() {
    let tools = json!([{"name": "f", "description": "does f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
                       {"type": "custom", "name": "g", "input_schema": {"type": "object", "properties": {}}}]);
    let c = chat(base(json!({"tools": tools})));
    assert_eq!(
        c["tools"],
        json!([
            {"type": "function", "function": {"name": "f", "description": "does f", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}}
        ])
    );
    for (choice, expected) in [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
        (json!({"type": "tool", "name": "f"}), json!({"type": "function", "function": {"name": "f"}})),
    ] {
        let c = chat(base(json!({"tools": tools, "tool_choice": choice})));
        assert_eq!(c["tool_choice"], expected, "{choice}");
        assert!(c.get("parallel_tool_calls").is_none());
    }
    let c = chat(base(json!({"tools": tools, "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}})));
    assert_eq!(c["parallel_tool_calls"], false);
}

#[test]
fn what_chat_cannot_carry_is_noted_not_refused() {
    for (extra, named) in [
        (json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}), "web_search_20250305"),
        (json!({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}), "mcp_servers"),
        (json!({"container": "c1"}), "container"),
        (json!({"context_management": {}}), "context_management"),
        (json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "d", "media_type": "text/plain"}}]}]}), "document"),
        (json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}), "file"),
        (json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}]}]}]}), "image"),
    ] {
        let inbound = request_to_chat(base(extra.clone()).to_string().as_bytes()).unwrap();
        let e = inbound.unsupported.unwrap_or_else(|| panic!("{extra} not noted"));
        assert!(e.to_string().contains(named), "{extra}: {e}");
        assert_eq!(e.status(), 400);
        // The chat form is still made (an Anthropic deployment would not need it).
        serde_json::from_slice::<Value>(&inbound.chat).unwrap();
    }
}

#[test]
fn malformed_requests_are_refused_naming_the_member() {
    for (body, param) in [
        ("[]".to_string(), "body"),
        ("{".to_string(), "body"),
        (json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}).to_string(), "model"),
        (json!({"model": 1, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}).to_string(), "model"),
        (json!({"model": "m", "max_tokens": 1}).to_string(), "messages"),
        (json!({"model": "m", "max_tokens": 1, "messages": []}).to_string(), "messages"),
        (json!({"model": "m", "max_tokens": 1, "messages": "hi"}).to_string(), "messages"),
        (json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}).to_string(), "max_tokens"),
        (json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}).to_string(), "max_tokens"),
        (json!({"model": "m", "max_tokens": 1.5, "messages": [{"role": "user", "content": "x"}]}).to_string(), "max_tokens"),
        (json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}).to_string(), "messages[0].role"),
        (json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user"}]}).to_string(), "messages[0].content"),
        (json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"text": "x"}]}]}).to_string(), "messages[0].content[0].type"),
        (json!({"model": "m", "max_tokens": 1, "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}).to_string(), "temperature"),
        (json!({"model": "m", "max_tokens": 1, "tools": [{"name": "f"}], "messages": [{"role": "user", "content": "x"}]}).to_string(), "tools[0].input_schema"),
        (json!({"model": "m", "max_tokens": 1, "tool_choice": {"type": "sometimes"}, "messages": [{"role": "user", "content": "x"}]}).to_string(), "tool_choice.type"),
        (r#"{"model":"m","model":"n","max_tokens":1,"messages":[{"role":"user","content":"x"}]}"#.to_string(), "body"),
    ] {
        match request_to_chat(body.as_bytes()) {
            Err(TranslateError::Invalid { param: p, .. }) => assert_eq!(p, param, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn with_model_replaces_only_the_model() {
    let body = br#"{ "max_tokens":1, "model" : "claude@price" , "messages":[{"role":"user","content":"caf\u00e9"}],"x":1.50}"#;
    let inbound = request_to_chat(body).unwrap();
    let out = with_model(body, &inbound.model_span, "claude-\"sonnet\"");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{ "max_tokens":1, "model" : "claude-\"sonnet\"" , "messages":[{"role":"user","content":"caf\u00e9"}],"x":1.50}"#
    );
}

#[test]
fn answers_become_messages() {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "upstream",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Calling.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
                {"id": "call_3", "type": "function", "function": {"name": "h", "arguments": "{broken"}}
            ]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60},
                  "cache_creation_input_tokens": 10, "cost": 0.5, "cost_details": {"input": 0.25}}
    });
    let m: Value = serde_json::from_slice(&message_from_chat(body.to_string().as_bytes(), "llama").unwrap()).unwrap();
    assert_eq!(
        m,
        json!({
            "id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "llama",
            "content": [
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
                {"type": "tool_use", "id": "call_3", "name": "h", "input": {"_raw_arguments": "{broken"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 30, "output_tokens": 7, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 10,
                      "cost": 0.5, "cost_details": {"input": 0.25}}
        })
    );
}

#[test]
fn every_finish_reason_has_a_stop_reason() {
    for (finish, stop) in [
        (json!("stop"), "end_turn"),
        (json!("length"), "max_tokens"),
        (json!("tool_calls"), "tool_use"),
        (json!("function_call"), "tool_use"),
        (json!("content_filter"), "refusal"),
        (json!(null), "end_turn"),
        (json!("something_new"), "end_turn"),
    ] {
        let body = json!({"id": "x", "choices": [{"message": {"content": "a"}, "finish_reason": finish}]});
        let m: Value = serde_json::from_slice(&message_from_chat(body.to_string().as_bytes(), "m").unwrap()).unwrap();
        assert_eq!(m["stop_reason"], stop, "{finish}");
    }
    // A refusal is the text when there is no content; no usage reads as zeros.
    let body = json!({"choices": [{"message": {"content": null, "refusal": "No."}, "finish_reason": "content_filter"}]});
    let m: Value = serde_json::from_slice(&message_from_chat(body.to_string().as_bytes(), "m").unwrap()).unwrap();
    assert_eq!(m["content"], json!([{"type": "text", "text": "No."}]));
    assert_eq!(m["usage"]["input_tokens"], 0);
    for bad in [&b"[]"[..], b"{}", b"{\"choices\":3}", b"nope"] {
        assert!(message_from_chat(bad, "m").is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn errors_are_in_anthropic_shape() {
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (501, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ] {
        let v: Value = serde_json::from_slice(&error_body(status, "m \"q\"")).unwrap();
        assert_eq!(v, json!({"type": "error", "error": {"type": kind, "message": "m \"q\""}}), "{status}");
    }
    let v: Value = serde_json::from_slice(&error_from_openai(429, br#"{"error":{"message":"slow down","type":"requests","code":"x"}}"#)).unwrap();
    assert_eq!(v, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}));
    let v: Value = serde_json::from_slice(&error_from_openai(400, b"<html>secret internals</html>")).unwrap();
    assert_eq!(v["error"]["message"], "The upstream returned HTTP 400.");
    let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(5000));
    let v: Value = serde_json::from_slice(&error_from_openai(400, long.as_bytes())).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().chars().count() <= super::super::MAX_ERROR_MESSAGE + 1);
    let ev = String::from_utf8(error_event("broke")).unwrap();
    assert!(ev.starts_with("event: error\ndata: {") && ev.ends_with("}\n\n"), "{ev}");
}

/// A recorded OpenAI stream: role chunk, text, a tool call in pieces, finish, usage, `[DONE]`.
fn recorded_openai_stream() -> String {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "up",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let events = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hel"}), Value::Null),
        chunk(json!({"content": "lo \u{e9}\n"}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": [],
               "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.25, "cost_details": {"output": 0.2}}}),
    ];
    let mut s: String = events.iter().map(|e| format!("data: {e}\r\n\r\n")).collect();
    s.push_str("data: [DONE]\r\n\r\n");
    s
}

/// The stream through an SSE parser and [`EventStream`], fed in two pieces split at `at`.
fn convert_split(stream: &[u8], at: usize) -> Vec<u8> {
    let mut parser = SseParser::default();
    let mut conv = EventStream::new("llama");
    let mut items = Vec::new();
    let (a, b) = stream.split_at(at);
    parser.feed(a, &mut items).unwrap();
    parser.feed(b, &mut items).unwrap();
    parser.finish(&mut items);
    let mut out = Vec::new();
    for item in items {
        if let SseItem::Event { data, .. } = item {
            out.extend(if data == "[DONE]" { conv.done() } else { conv.chunk(&data) });
        }
    }
    out
}

#[test]
fn a_stream_converts_the_same_at_every_byte_split() {
    let stream = recorded_openai_stream();
    let whole = convert_split(stream.as_bytes(), 0);
    for at in 1..stream.len() {
        assert_eq!(convert_split(stream.as_bytes(), at), whole, "split at {at}");
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
            "message_start",
            "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_stop",
            "message_delta", "message_stop",
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"].as_str(), Some(name.as_str()));
    }
    assert_eq!(events[0].1["message"]["id"], "chatcmpl-9");
    assert_eq!(events[0].1["message"]["model"], "llama");
    assert_eq!(events[2].1["delta"], json!({"type": "text_delta", "text": "Hel"}));
    assert_eq!(events[3].1["delta"]["text"], "lo \u{e9}\n");
    assert_eq!(events[5].1, json!({"type": "content_block_start", "index": 1,
        "content_block": {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}}));
    assert_eq!(events[6].1["delta"], json!({"type": "input_json_delta", "partial_json": "{\"a\""}));
    assert_eq!(events[9].1["content_block"]["name"], "g");
    assert_eq!(events[10].1["delta"]["partial_json"], "{}");
    assert_eq!(
        events[12].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
                         "cost": 0.25, "cost_details": {"output": 0.2}}})
    );
}

#[test]
fn an_empty_stream_still_has_the_full_grammar() {
    let mut conv = EventStream::new("m");
    let out = String::from_utf8(conv.done()).unwrap();
    let names: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
    // Unreadable chunks produce nothing, not a crash.
    let mut conv = EventStream::new("m");
    assert!(conv.chunk("not json").is_empty());
    assert!(!conv.chunk(r#"{"choices":[{"delta":{"content":5}}]}"#).is_empty(), "message_start still opens the message");
}
