use serde_json::{json, Value};

use super::*;
use crate::api::sse::{SseItem, SseParser};

fn req(body: Value) -> Result<(Value, Option<String>), TranslateError> {
    let out = request_to_anthropic(body.to_string().as_bytes(), "claude-up", 1024)?;
    let v: Value = serde_json::from_slice(&out.body).expect("output is JSON");
    Ok((v, out.forced_json_tool))
}

fn ok(body: Value) -> Value {
    req(body).unwrap().0
}

fn err(body: Value) -> TranslateError {
    req(body).unwrap_err()
}

fn user(text: &str) -> Value {
    json!({"role":"user","content":text})
}

fn base(messages: Value) -> Value {
    json!({"model":"m","messages":messages})
}

fn with(extra: Value) -> Value {
    let mut b = base(json!([user("hi")]));
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[test]
fn plain_request() {
    let v = ok(json!({"model":"m@price","messages":[{"role":"user","content":"Hello \"you\"\n"}]}));
    assert_eq!(
        v,
        json!({"model":"claude-up","max_tokens":1024,"messages":[{"role":"user","content":[{"type":"text","text":"Hello \"you\"\n"}]}]})
    );
}

#[test]
fn text_passes_through_byte_exact() {
    // The client's escapes reach the upstream as sent (no decode/re-encode).
    let body = br#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00 \/ x"}]}"#;
    let out = request_to_anthropic(body, "u", 5).unwrap();
    let text = String::from_utf8(out.body).unwrap();
    assert!(text.contains(r#""text":"caf\u00e9 \ud83d\ude00 \/ x""#), "{text}");
}

#[test]
fn system_and_developer_messages_become_system_blocks() {
    let v = ok(base(json!([
        {"role":"system","content":"be brief"},
        {"role":"developer","content":[{"type":"text","text":"use metric"},{"type":"text","text":""}]},
        user("q"),
        {"role":"system","content":"late"},
    ])));
    assert_eq!(
        v["system"],
        json!([{"type":"text","text":"be brief"},{"type":"text","text":"use metric"},{"type":"text","text":"late"}])
    );
    assert_eq!(v["messages"], json!([{"role":"user","content":[{"type":"text","text":"q"}]}]));
    assert!(err(base(json!([{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}, user("q")]))).to_string().contains("messages[0].content[0].type"));
}

#[test]
fn consecutive_same_role_messages_merge() {
    let v = ok(base(json!([
        user("a"),
        {"role":"user","content":[{"type":"text","text":"b"}]},
        {"role":"assistant","content":"c"},
        {"role":"assistant","content":""},
        {"role":"assistant","content":"d"},
        user("e"),
    ])));
    assert_eq!(
        v["messages"],
        json!([
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
            {"role":"assistant","content":[{"type":"text","text":"c"},{"type":"text","text":"d"}]},
            {"role":"user","content":[{"type":"text","text":"e"}]},
        ])
    );
    // An empty assistant message between two user messages leaves one user turn.
    let v = ok(base(json!([user("a"), {"role":"assistant","content":null}, user("b")])));
    assert_eq!(v["messages"], json!([{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]));
}

#[test]
fn images() {
    let v = ok(base(json!([{"role":"user","content":[
        {"type":"text","text":"what is this"},
        {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"high"}},
        {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg"}},
    ]}])));
    assert_eq!(
        v["messages"][0]["content"],
        json!([
            {"type":"text","text":"what is this"},
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
            {"type":"image","source":{"type":"url","url":"https://example.com/cat.jpg"}},
        ])
    );
    for bad in ["data:image/png,abc", "data:;base64,abc", "ftp://x/y.png", "file:///etc/passwd"] {
        let e = err(base(json!([{"role":"user","content":[{"type":"image_url","image_url":{"url":bad}}]}])));
        assert!(matches!(&e, TranslateError::Invalid { param, .. } if param == "messages[0].content[0].image_url.url"), "{bad}: {e:?}");
    }
}

#[test]
fn tool_call_round_trip_request() {
    let v = ok(json!({
        "model":"m",
        "messages":[
            user("weather in Paris and Rome?"),
            {"role":"assistant","content":"Let me check.","tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"call_2","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Rome\"}"}},
                {"id":"call_3","type":"function","function":{"name":"now","arguments":""}},
            ]},
            {"role":"tool","tool_call_id":"call_1","content":"18C"},
            {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"21C"}]},
            {"role":"tool","tool_call_id":"call_3","content":""},
            user("thanks; which is warmer?"),
        ],
        "tools":[
            {"type":"function","function":{"name":"weather","description":"Weather by city","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
            {"type":"function","function":{"name":"now"}},
        ],
        "tool_choice":"required",
        "parallel_tool_calls":false,
    }));
    assert_eq!(
        v["messages"],
        json!([
            {"role":"user","content":[{"type":"text","text":"weather in Paris and Rome?"}]},
            {"role":"assistant","content":[
                {"type":"text","text":"Let me check."},
                {"type":"tool_use","id":"call_1","name":"weather","input":{"city":"Paris"}},
                {"type":"tool_use","id":"call_2","name":"weather","input":{"city":"Rome"}},
                {"type":"tool_use","id":"call_3","name":"now","input":{}},
            ]},
            {"role":"user","content":[
                {"type":"tool_result","tool_use_id":"call_1","content":[{"type":"text","text":"18C"}]},
                {"type":"tool_result","tool_use_id":"call_2","content":[{"type":"text","text":"21C"}]},
                {"type":"tool_result","tool_use_id":"call_3"},
                {"type":"text","text":"thanks; which is warmer?"},
            ]},
        ])
    );
    assert_eq!(
        v["tools"],
        json!([
            {"name":"weather","description":"Weather by city","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}},
            {"name":"now","input_schema":{"type":"object"}},
        ])
    );
    assert_eq!(v["tool_choice"], json!({"type":"any","disable_parallel_tool_use":true}));
}

#[test]
fn bad_tool_calls_are_400() {
    for args in ["{not json", "[1,2]", "\"str\"", "{} extra"] {
        let e = err(base(json!([user("x"), {"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":args}}]}])));
        assert!(matches!(&e, TranslateError::Invalid { param, .. } if param == "messages[1].tool_calls"), "{args}: {e:?}");
        assert_eq!(e.status(), 400);
    }
    let e = err(base(json!([user("x"), {"role":"tool","content":"r"}])));
    assert!(matches!(&e, TranslateError::Invalid { param, .. } if param == "messages[1].tool_call_id"), "{e:?}");
    let e = err(base(json!([user("x"), {"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{}"}}]}])));
    assert!(e.to_string().contains("messages[1].tool_calls[0].id"), "{e}");
}

#[test]
fn tool_choice_mapping() {
    let tools = json!([{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]);
    let choice = |c: Value| ok(with(json!({"tools":tools,"tool_choice":c})))["tool_choice"].clone();
    assert_eq!(choice(json!("auto")), json!({"type":"auto"}));
    assert_eq!(choice(json!("none")), json!({"type":"none"}));
    assert_eq!(choice(json!("required")), json!({"type":"any"}));
    assert_eq!(choice(json!({"type":"function","function":{"name":"f"}})), json!({"type":"tool","name":"f"}));
    // Default: nothing said; parallel off alone still needs a choice to carry it.
    assert!(ok(with(json!({"tools":tools})))["tool_choice"].is_null());
    assert_eq!(ok(with(json!({"tools":tools,"parallel_tool_calls":false})))["tool_choice"], json!({"type":"auto","disable_parallel_tool_use":true}));
    assert_eq!(ok(with(json!({"tools":tools,"tool_choice":"none","parallel_tool_calls":false})))["tool_choice"], json!({"type":"none"}));
    // Without tools, choices are dropped.
    let v = ok(with(json!({"tool_choice":"none","parallel_tool_calls":false})));
    assert!(v["tool_choice"].is_null() && v["tools"].is_null());
    assert!(matches!(err(with(json!({"tools":tools,"tool_choice":"sometimes"}))), TranslateError::Invalid { .. }));
    assert!(matches!(err(with(json!({"tools":tools,"tool_choice":{"type":"function","function":{"name":"g"}}}))), TranslateError::Invalid { .. }));
    assert_eq!(err(with(json!({"tools":[{"type":"custom","custom":{"name":"x"}}]}))), TranslateError::Unsupported { param: "tools[0].type".into() });
}

#[test]
fn sampling_and_misc_parameters() {
    let v = ok(with(json!({"max_tokens":50,"temperature":0.5,"top_p":0.9,"stop":"END","user":"u-1","stream":true,
        "seed":7,"stream_options":{"include_usage":true},"service_tier":"auto","store":false,"metadata":{"a":"b"},"n":1,
        "presence_penalty":0,"frequency_penalty":0.0,"logit_bias":{},"logprobs":false,"modalities":["text"],"whatever":{"x":1}})));
    assert_eq!(
        v,
        json!({"model":"claude-up","max_tokens":50,"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],
            "temperature":0.5,"top_p":0.9,"stop_sequences":["END"],"metadata":{"user_id":"u-1"},"stream":true})
    );
    let v = ok(with(json!({"max_tokens":50,"max_completion_tokens":70,"stop":["a","b"],"temperature":1.7})));
    assert_eq!(v["max_tokens"], 70);
    assert_eq!(v["stop_sequences"], json!(["a","b"]));
    assert_eq!(v["temperature"], 1);
    let v = ok(with(json!({"max_tokens":null,"stop":null,"temperature":null})));
    assert_eq!(v["max_tokens"], 1024);
    assert!(v.get("stop_sequences").is_none() && v.get("temperature").is_none());
    for (extra, param) in [
        (json!({"max_tokens":0}), "max_tokens"),
        (json!({"max_tokens":"9"}), "max_tokens"),
        (json!({"temperature":"hot"}), "temperature"),
        (json!({"stop":[1]}), "stop"),
        (json!({"user":5}), "user"),
        (json!({"stream":"yes"}), "stream"),
    ] {
        let e = err(with(extra.clone()));
        assert!(matches!(&e, TranslateError::Invalid { param: p, .. } if p == param), "{extra}: {e:?}");
    }
}

#[test]
fn unsupported_parameters_are_400_naming_them() {
    for (extra, param) in [
        (json!({"n":2}), "n"),
        (json!({"logprobs":true}), "logprobs"),
        (json!({"top_logprobs":3}), "top_logprobs"),
        (json!({"presence_penalty":0.5}), "presence_penalty"),
        (json!({"frequency_penalty":-1}), "frequency_penalty"),
        (json!({"logit_bias":{"50256":-100}}), "logit_bias"),
        (json!({"audio":{"voice":"alloy","format":"wav"}}), "audio"),
        (json!({"modalities":["text","audio"]}), "modalities"),
        (json!({"prediction":{"type":"content","content":"x"}}), "prediction"),
        (json!({"functions":[{"name":"f"}]}), "functions"),
        (json!({"function_call":"auto"}), "function_call"),
        (json!({"response_format":{"type":"json_object"}}), "response_format"),
    ] {
        let e = err(with(extra.clone()));
        assert_eq!(e, TranslateError::Unsupported { param: param.into() }, "{extra}");
        assert_eq!(e.status(), 400);
        let body: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(body["error"]["param"], param);
    }
    let e = err(base(json!([{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"x","format":"wav"}}]}])));
    assert_eq!(e, TranslateError::Unsupported { param: "messages[0].content[0].type".into() });
}

#[test]
fn bad_shapes_are_invalid() {
    for (messages, param) in [
        (json!([{"content":"x"}]), "messages[0].role"),
        (json!([user("x"), {"role":7,"content":"x"}]), "messages[1].role"),
        (json!([{"role":"wizard","content":"x"}]), "messages[0].role"),
        (json!([{"role":"function","name":"f","content":"x"}]), "messages[0].role"),
        (json!([{"role":"user","content":42}]), "messages[0].content"),
        (json!([{"role":"user","content":{"text":"x"}}]), "messages[0].content"),
        (json!([{"role":"user"}]), "messages[0].content"),
        (json!([{"role":"user","content":[{"type":"text","text":3}]}]), "messages[0].content[0].text"),
        (json!([{"role":"user","content":[{"type":"video"}]}]), "messages[0].content[0].type"),
        (json!([{"role":"user","content":[{"text":"x"}]}]), "messages[0].content[0]"),
        (json!(["hello"]), "messages[0]"),
        (json!([{"role":"system","content":"only a system prompt"}]), "messages"),
    ] {
        let e = err(base(messages.clone()));
        assert!(matches!(&e, TranslateError::Invalid { param: p, .. } if p == param), "{messages}: {e:?}");
    }
    // A duplicated member is refused rather than guessed.
    let e = request_to_anthropic(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":"a","stop":"b"}"#, "u", 5).unwrap_err();
    assert!(matches!(e, TranslateError::Invalid { .. }));
}

#[test]
fn json_schema_becomes_a_forced_tool() {
    let schema = json!({"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]});
    let (v, forced) = req(with(json!({"response_format":{"type":"json_schema","json_schema":{"name":"answer","schema":schema,"strict":true}}}))).unwrap();
    assert_eq!(forced.as_deref(), Some("answer"));
    assert_eq!(v["tools"], json!([{"name":"answer","input_schema":schema}]));
    assert_eq!(v["tool_choice"], json!({"type":"tool","name":"answer"}));
    // With the client's own tools: call one of them or give the answer.
    let tools = json!([{"type":"function","function":{"name":"f"}}]);
    let rf = json!({"type":"json_schema","json_schema":{"name":"answer","schema":schema}});
    let (v, _) = req(with(json!({"tools":tools,"response_format":rf}))).unwrap();
    assert_eq!(v["tools"][1]["name"], "answer");
    assert_eq!(v["tool_choice"], json!({"type":"any"}));
    let (v, _) = req(with(json!({"tools":tools,"response_format":rf,"tool_choice":"none"}))).unwrap();
    assert_eq!(v["tool_choice"], json!({"type":"tool","name":"answer"}));
    let (v, _) = req(with(json!({"tools":tools,"response_format":rf,"tool_choice":{"type":"function","function":{"name":"f"}}}))).unwrap();
    assert_eq!(v["tool_choice"], json!({"type":"tool","name":"f"}));
    // A clash with a client tool, and a schema without a name, are refused.
    let clash = json!([{"type":"function","function":{"name":"answer"}}]);
    assert!(matches!(err(with(json!({"tools":clash,"response_format":rf}))), TranslateError::Invalid { .. }));
    assert!(matches!(err(with(json!({"response_format":{"type":"json_schema","json_schema":{"schema":schema}}}))), TranslateError::Invalid { .. }));
    // `text` asks for nothing.
    let (v, forced) = req(with(json!({"response_format":{"type":"text"}}))).unwrap();
    assert!(forced.is_none() && v.get("tools").is_none());
}

#[test]
fn large_request_is_copied_about_once() {
    // 200 messages, ~2 MiB of text with escapes: the output stays about the input's size.
    let chunk = "lorem \"ipsum\" \\ dolor\n".repeat(470);
    let messages: Vec<Value> = (0..200)
        .map(|i| if i % 2 == 0 { json!({"role":"user","content":chunk}) } else { json!({"role":"assistant","content":[{"type":"text","text":chunk}]}) })
        .collect();
    let body = base(Value::Array(messages)).to_string();
    assert!(body.len() > 2_000_000, "{}", body.len());
    let out = request_to_anthropic(body.as_bytes(), "u", 5).unwrap();
    assert!(out.body.len() < body.len() + body.len() / 50, "{} vs {}", out.body.len(), body.len());
    assert!(out.body.capacity() <= body.len() + body.len() / 8 + 1024, "the output buffer never doubled");
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 200);
    assert_eq!(v["messages"][199]["content"][0]["text"], chunk.as_str());
}

// ------------------------------------------------------------------------------------------
// Answers
// ------------------------------------------------------------------------------------------

fn resp(body: Value, forced: Option<&str>) -> Value {
    serde_json::from_slice(&response_from_anthropic(body.to_string().as_bytes(), forced, 1_700_000_000).unwrap()).unwrap()
}

#[test]
fn text_answer() {
    let v = resp(
        json!({"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[
            {"type":"thinking","thinking":"secret musings","signature":"sig"},
            {"type":"text","text":"Hello"},
            {"type":"redacted_thinking","data":"xx"},
            {"type":"text","text":", world"},
        ],"stop_reason":"end_turn","stop_sequence":null,
        "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"service_tier":"standard"}}),
        None,
    );
    assert_eq!(
        v,
        json!({"id":"msg_1","object":"chat.completion","created":1_700_000_000u64,"model":"claude-x",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello, world","refusal":null},"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":130,"completion_tokens":5,"total_tokens":135,"prompt_tokens_details":{"cached_tokens":100},"cache_read_input_tokens":100,"cache_creation_input_tokens":20}})
    );
    assert!(!v.to_string().contains("musings"), "thinking never leaks");
}

#[test]
fn every_stop_reason() {
    for (stop, finish) in [
        (json!("end_turn"), "stop"),
        (json!("stop_sequence"), "stop"),
        (json!("max_tokens"), "length"),
        (json!("model_context_window_exceeded"), "length"),
        (json!("tool_use"), "tool_calls"),
        (json!("refusal"), "content_filter"),
        (json!("pause_turn"), "stop"),
        (json!(null), "stop"),
        (json!("something_new"), "stop"),
    ] {
        let v = resp(json!({"id":"m","model":"c","content":[{"type":"text","text":"x"}],"stop_reason":stop}), None);
        assert_eq!(v["choices"][0]["finish_reason"], finish, "{stop}");
        assert!(v.get("usage").is_none());
    }
}

#[test]
fn tool_use_answer_round_trips_arguments() {
    let input = json!({"city":"Paris","units":["C"],"deep":{"q":"a \"quoted\" \\ value"}});
    let v = resp(
        json!({"id":"m","model":"c","content":[
            {"type":"text","text":"Checking."},
            {"type":"tool_use","id":"toolu_1","name":"weather","input":input},
            {"type":"server_tool_use","id":"srv_1","name":"web_search","input":{"query":"x"}},
            {"type":"web_search_tool_result","tool_use_id":"srv_1","content":[]},
            {"type":"tool_use","id":"toolu_2","name":"now","input":{}},
        ],"stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4}}),
        None,
    );
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], "Checking.");
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "toolu_1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "weather");
    let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, input);
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["usage"], json!({"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0},"cache_read_input_tokens":0,"cache_creation_input_tokens":0}));
    // No text: content is null.
    let v = resp(json!({"id":"m","model":"c","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use"}), None);
    assert!(v["choices"][0]["message"]["content"].is_null());
}

#[test]
fn forced_json_tool_answer_becomes_content() {
    let body = json!({"id":"m","model":"c","content":[{"type":"tool_use","id":"t","name":"answer","input":{"n":42}}],"stop_reason":"tool_use"});
    let v = resp(body, Some("answer"));
    let msg = &v["choices"][0]["message"];
    assert_eq!(serde_json::from_str::<Value>(msg["content"].as_str().unwrap()).unwrap(), json!({"n":42}));
    assert!(msg.get("tool_calls").is_none());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Text beside the answer is not content (a stream cannot hold it back either).
    let body = json!({"id":"m","model":"c","content":[{"type":"text","text":"Here you go:"},{"type":"tool_use","id":"t","name":"answer","input":{"n":42}}],"stop_reason":"tool_use"});
    let v = resp(body, Some("answer"));
    assert_eq!(serde_json::from_str::<Value>(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap(), json!({"n":42}));
    // The model chose a real tool instead: that stays a tool call.
    let body = json!({"id":"m","model":"c","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use"});
    let v = resp(body, Some("answer"));
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "f");
}

#[test]
fn broken_answers_are_errors_not_panics() {
    for body in [
        &b""[..],
        b"[]",
        b"\"x\"",
        b"{",
        br#"{"id":"m"}"#,
        br#"{"content":"text"}"#,
        br#"{"content":[{"text":"no type"}]}"#,
        br#"{"content":[{"type":"tool_use","name":"f","input":{}}]}"#,
        br#"{"content":[{"type":"tool_use","id":"t","name":"f","input":"{}"}]}"#,
        br#"{"content":[],"usage":{"input_tokens":-1}}"#,
        br#"{"content":[],"usage":{"input_tokens":1.5}}"#,
        br#"{"id":7,"content":[]}"#,
        br#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
    ] {
        let e = response_from_anthropic(body, None, 0).unwrap_err();
        assert!(matches!(e, TranslateError::Malformed { .. }), "{}", String::from_utf8_lossy(body));
        assert_eq!(e.status(), 502);
    }
    // Huge counts saturate instead of overflowing.
    let v = resp(json!({"content":[],"usage":{"input_tokens":u64::MAX,"output_tokens":u64::MAX,"cache_read_input_tokens":5}}), None);
    assert_eq!(v["usage"]["total_tokens"], u64::MAX);
}

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

#[test]
fn error_mapping() {
    for (status, kind, openai) in [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "invalid_request_error"),
        (403, "permission_error", "invalid_request_error"),
        (404, "not_found_error", "invalid_request_error"),
        (413, "request_too_large", "invalid_request_error"),
        (429, "rate_limit_error", "rate_limit_error"),
        (500, "api_error", "server_error"),
        (529, "overloaded_error", "server_error"),
        (418, "teapot_error", "invalid_request_error"),
        (503, "brand_new_error", "server_error"),
    ] {
        let body = json!({"type":"error","error":{"type":kind,"message":"details here"},"request_id":"req_1"}).to_string();
        let v: Value = serde_json::from_slice(&error_from_anthropic(status, body.as_bytes())).unwrap();
        assert_eq!(v, json!({"error":{"message":"details here","type":openai,"param":null,"code":kind}}), "{kind}");
    }
    for body in [&b"<html>502 Bad Gateway</html>"[..], b"", b"{\"error\":\"x\"}", b"{\"type\":\"error\"}", b"[1]"] {
        let v: Value = serde_json::from_slice(&error_from_anthropic(502, body)).unwrap();
        assert_eq!(v["error"]["message"], "The upstream provider returned HTTP 502.");
        assert_eq!(v["error"]["type"], "server_error");
        assert!(!v.to_string().contains("html"));
    }
    let v: Value = serde_json::from_slice(&error_from_anthropic(429, b"nope")).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Long messages are clipped on a character boundary.
    let long = "é".repeat(5000);
    let body = json!({"type":"error","error":{"type":"invalid_request_error","message":long}}).to_string();
    let v: Value = serde_json::from_slice(&error_from_anthropic(400, body.as_bytes())).unwrap();
    assert_eq!(v["error"]["message"].as_str().unwrap().chars().count(), MAX_ERROR_MESSAGE + 1);
}

// ------------------------------------------------------------------------------------------
// Streams
// ------------------------------------------------------------------------------------------

/// A recorded-style Anthropic stream: a text block, a ping, and a tool_use block whose input
/// arrives in several pieces (one of them empty), with CRLF line ends in places.
const STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":100,\"output_tokens\":2}}}\n",
    "\n",
    "event: content_block_start\r\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n",
    "\r\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay, let\\u2019s check \\\"Paris\\\"\"}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\".\\n\"}}\n",
    "\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
    "\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Par\"}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is, FR\\\", \\\"unit\\\"\"}}\n",
    "\n",
    ": a comment\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\": \\\"celsius\\\"}\"}}\n",
    "\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n",
    "\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n",
    "\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n",
    "\n",
);

/// Parses `parts` with the gateway's SSE parser and converts each event as it comes out.
fn convert(parts: &[&[u8]], forced: Option<&str>) -> Result<Vec<String>, TranslateError> {
    let mut parser = SseParser::default();
    let mut conv = StreamConverter::new(1_700_000_000, forced.map(str::to_string));
    let mut chunks = Vec::new();
    for part in parts {
        let mut items = Vec::new();
        parser.feed(part, &mut items).unwrap();
        for item in items {
            if let SseItem::Event { event, data } = item {
                chunks.extend(conv.event(event.as_deref(), &data)?);
            }
        }
    }
    let mut items = Vec::new();
    parser.finish(&mut items);
    assert!(items.is_empty() && !parser.has_partial());
    assert!(conv.done());
    Ok(chunks)
}

#[test]
fn stream_converts_identically_at_every_split() {
    let whole = STREAM.as_bytes();
    let expected = convert(&[whole], None).unwrap();
    let prefix = r#"{"id":"msg_01","object":"chat.completion.chunk","created":1700000000,"model":"claude-x","#;
    let want: Vec<String> = [
        r#""choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        r#""choices":[{"index":0,"delta":{"content":"Okay, let\u2019s check \"Paris\""},"finish_reason":null}]}"#,
        r#""choices":[{"index":0,"delta":{"content":".\n"},"finish_reason":null}]}"#,
        r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"toolu_01","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
        r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"location\": \"Par"}}]},"finish_reason":null}]}"#,
        r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"is, FR\", \"unit\""}}]},"finish_reason":null}]}"#,
        r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":": \"celsius\"}"}}]},"finish_reason":null}]}"#,
        r#""choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        r#""choices":[],"usage":{"prompt_tokens":582,"completion_tokens":89,"total_tokens":671,"prompt_tokens_details":{"cached_tokens":100},"cache_read_input_tokens":100,"cache_creation_input_tokens":10}}"#,
    ]
    .iter()
    .map(|c| format!("{prefix}{c}"))
    .chain(std::iter::once("[DONE]".to_string()))
    .collect();
    assert_eq!(expected, want);
    for c in &expected[..expected.len() - 1] {
        let v: Value = serde_json::from_str(c).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(v["object"], "chat.completion.chunk");
    }
    // The usage chunk is what joule's relay recognises as the usage-only chunk.
    match crate::api::chat::classify(&expected[8]) {
        crate::api::chat::StreamEvent::Chunk(c) => {
            assert!(c.usage_only);
            assert_eq!(c.usage, Some(crate::api::chat::Usage::Tokens(crate::api::chat::TokenCounts { prompt: 582, completion: 89, cache_read: 100, cache_write: 10 })));
        }
        other => panic!("{other:?}"),
    }
    let text: String = expected
        .iter()
        .filter_map(|c| serde_json::from_str::<Value>(c).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "Okay, let\u{2019}s check \"Paris\".\n");
    let args: String = expected
        .iter()
        .filter_map(|c| serde_json::from_str::<Value>(c).ok())
        .filter_map(|v| v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().map(str::to_string))
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"location":"Paris, FR","unit":"celsius"}));

    for cut in 0..=whole.len() {
        let (a, b) = whole.split_at(cut);
        assert_eq!(convert(&[a, b], None).unwrap(), expected, "split at {cut}");
    }
}

#[test]
fn stream_with_forced_json_tool_streams_content() {
    let stream = STREAM.replace("get_weather", "answer");
    let chunks = convert(&[stream.as_bytes()], Some("answer")).unwrap();
    let values: Vec<Value> = chunks.iter().filter(|c| *c != "[DONE]").map(|c| serde_json::from_str(c).unwrap()).collect();
    assert!(values.iter().all(|v| v["choices"][0]["delta"].get("tool_calls").is_none()));
    let content: String = values.iter().filter_map(|v| v["choices"][0]["delta"]["content"].as_str()).collect();
    // Text before the answer tool is not content: the content is the JSON answer only, as in
    // a whole answer.
    assert_eq!(serde_json::from_str::<Value>(&content).unwrap(), json!({"location":"Paris, FR","unit":"celsius"}), "{content}");
    let finish: Vec<&str> = values.iter().filter_map(|v| v["choices"][0]["finish_reason"].as_str()).collect();
    assert_eq!(finish, ["stop"]);
}

fn start() -> StreamConverter {
    let mut c = StreamConverter::new(1, None);
    let start = r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":1,"output_tokens":1}}}"#;
    assert_eq!(c.event(Some("message_start"), start).unwrap().len(), 1);
    c
}

#[test]
fn stream_skips_thinking_and_unknown_things() {
    let mut c = start();
    for (name, data) in [
        ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#),
        ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"secret"}}"#),
        ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig"}}"#),
        ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
        ("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use","id":"s","name":"web_search","input":{}}}"#),
        ("content_block_delta", r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":1}"}}"#),
        ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
        ("content_block_start", r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}"#),
        ("content_block_delta", r#"{"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{}}}"#),
        ("content_block_delta", r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":""}}"#),
        ("brand_new_event", r#"{"type":"brand_new_event","x":1}"#),
        ("ping", r#"{"type":"ping"}"#),
    ] {
        assert_eq!(c.event(Some(name), data).unwrap(), Vec::<String>::new(), "{data}");
    }
    let out = c.event(None, r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"visible"}}"#).unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].contains("visible") && !out[0].contains("secret"));
    let out = c.event(None, r#"{"type":"message_delta","delta":{"stop_reason":"refusal"},"usage":{"output_tokens":7,"input_tokens":3}}"#).unwrap();
    assert!(out[0].contains(r#""finish_reason":"content_filter""#), "{}", out[0]);
    assert!(out[1].contains(r#""prompt_tokens":3,"completion_tokens":7"#), "{}", out[1]);
}

#[test]
fn stream_errors() {
    // The upstream's error event ends the stream with its message.
    let mut c = start();
    let e = c.event(Some("error"), r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#).unwrap_err();
    assert_eq!(e, TranslateError::UpstreamStream { message: "overloaded_error: Overloaded".into() });
    // Before message_start too.
    let e = StreamConverter::new(1, None).event(None, r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#).unwrap_err();
    assert!(matches!(e, TranslateError::UpstreamStream { .. }));

    let malformed = |c: &mut StreamConverter, name: Option<&str>, data: &str| {
        let e = c.event(name, data).unwrap_err();
        assert!(matches!(e, TranslateError::Malformed { .. }), "{data}: {e:?}");
    };
    for data in ["", "not json", "[1]", "{\"no\":\"type\"}", "{\"type\":5}"] {
        malformed(&mut start(), None, data);
    }
    // Out of order.
    let block = r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    malformed(&mut StreamConverter::new(1, None), None, block);
    malformed(&mut StreamConverter::new(1, None), None, r#"{"type":"message_stop"}"#);
    malformed(&mut StreamConverter::new(1, None), None, r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#);
    let mut c = start();
    malformed(&mut c, None, r#"{"type":"message_start","message":{"id":"m","model":"c"}}"#);
    let mut c = start();
    malformed(&mut c, None, r#"{"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"x"}}"#);
    let mut c = start();
    malformed(&mut c, None, r#"{"type":"content_block_stop","index":0}"#);
    let mut c = start();
    malformed(&mut c, None, r#"{"type":"message_stop"}"#);
    let mut c = start();
    c.event(None, block).unwrap();
    malformed(&mut c, None, block);
    let mut c = start();
    c.event(None, r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#).unwrap();
    malformed(&mut c, None, r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#);
    let mut c = start();
    malformed(&mut c, None, r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","name":"f","input":{}}}"#);
    let mut c = start();
    c.event(None, r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#).unwrap();
    malformed(&mut c, None, r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#);
    malformed(&mut c, None, block);
    assert_eq!(c.event(None, r#"{"type":"message_stop"}"#).unwrap(), ["[DONE]"]);
    assert!(c.done());
    malformed(&mut c, None, r#"{"type":"message_stop"}"#);
    // An event name that disagrees with the data's type.
    malformed(&mut start(), Some("message_stop"), r#"{"type":"ping"}"#);
    // Bad usage counts.
    let mut c = start();
    malformed(&mut c, None, r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":-4}}"#);
    // Too many open blocks.
    let mut c = start();
    for i in 0..MAX_OPEN_BLOCKS {
        c.event(None, &format!(r#"{{"type":"content_block_start","index":{i},"content_block":{{"type":"text","text":""}}}}"#)).unwrap();
    }
    malformed(&mut c, None, r#"{"type":"content_block_start","index":999,"content_block":{"type":"text","text":""}}"#);
}

#[test]
fn every_stop_reason_in_streams() {
    for (stop, finish) in [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"), ("new_reason", "stop")] {
        let mut c = start();
        let out = c.event(None, &format!(r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop}"}},"usage":{{"output_tokens":2}}}}"#)).unwrap();
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], finish, "{stop}");
        assert_eq!(v["choices"][0]["delta"], json!({}));
    }
    let mut c = start();
    let out = c.event(None, r#"{"type":"message_delta","delta":{"stop_reason":null}}"#).unwrap();
    assert!(out[0].contains(r#""finish_reason":"stop""#));
}

/// Every truncation and many one-byte corruptions of rich inputs: each conversion either
/// fails with an error or produces valid JSON (raw members are pasted, so this checks that
/// nothing unvalidated is pasted), and never panics.
#[test]
fn corrupted_inputs_give_errors_or_valid_json() {
    let request = json!({
        "model":"m","stream":true,"max_tokens":9,"temperature":0.2,"stop":["x"],"user":"u",
        "messages":[
            {"role":"system","content":"s"},
            {"role":"user","content":[{"type":"text","text":"t\u{e9}"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
            {"role":"assistant","content":"a","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"k\":[1,2]}"}}]},
            {"role":"tool","tool_call_id":"c","content":"r"},
        ],
        "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
        "tool_choice":{"type":"function","function":{"name":"f"}},
        "response_format":{"type":"json_schema","json_schema":{"name":"out","schema":{"type":"object"}}},
    })
    .to_string();
    let answer = json!({"id":"m","model":"c","content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"t","name":"f","input":{"a":[1,{"b":null}]}}],
        "stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":2}})
    .to_string();
    let mutations = |s: &str| -> Vec<Vec<u8>> {
        let b = s.as_bytes();
        let mut out: Vec<Vec<u8>> = (0..b.len()).map(|i| b[..i].to_vec()).collect();
        for i in 0..b.len() {
            for c in [b'"', b'{', b']', b'\\', b',', b'0', b'x'] {
                let mut m = b.to_vec();
                m[i] = c;
                out.push(m);
            }
        }
        out
    };
    for body in mutations(&request) {
        if let Ok(r) = request_to_anthropic(&body, "u", 5) {
            assert!(serde_json::from_slice::<Value>(&r.body).is_ok(), "{}", String::from_utf8_lossy(&r.body));
        }
    }
    for body in mutations(&answer) {
        if let Ok(out) = response_from_anthropic(&body, Some("out"), 0) {
            assert!(serde_json::from_slice::<Value>(&out).is_ok(), "{}", String::from_utf8_lossy(&out));
        }
        assert!(serde_json::from_slice::<Value>(&error_from_anthropic(400, &body)).is_ok());
    }
    // Each stream event corrupted in turn, the others intact.
    let events: Vec<(Option<String>, String)> = {
        let mut p = SseParser::default();
        let mut items = Vec::new();
        p.feed(STREAM.as_bytes(), &mut items).unwrap();
        items.into_iter().filter_map(|i| if let SseItem::Event { event, data } = i { Some((event, data)) } else { None }).collect()
    };
    for (k, (_, data)) in events.iter().enumerate() {
        for m in mutations(data) {
            let Ok(bad) = String::from_utf8(m) else { continue };
            let mut c = StreamConverter::new(0, None);
            for (j, (name, d)) in events.iter().enumerate() {
                let d = if j == k { bad.as_str() } else { d.as_str() };
                match c.event(if j == k { None } else { name.as_deref() }, d) {
                    Ok(chunks) => {
                        for ch in chunks.iter().filter(|c| *c != "[DONE]") {
                            assert!(serde_json::from_str::<Value>(ch).is_ok(), "{ch}");
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
