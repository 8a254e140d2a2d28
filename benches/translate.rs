//! Cost of translating a large conversation for an Anthropic-API provider: a 2 MiB,
//! 200-message OpenAI chat request (system prompt, alternating turns, a tool call and its
//! result) → Anthropic Messages, next to joule's own inspection and rewrite of the same body
//! for an OpenAI-compatible upstream (the baseline every request pays), and the inbound way
//! (`/v1/messages`): that Anthropic body back to the chat form, inspected. Reports the output
//! size against the input: the translation copies each message's text once.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use joule::api::chat::inspect;
use joule::translate::anthropic::inbound::request_to_chat;
use joule::translate::anthropic::request_to_anthropic;

/// About `bytes` of conversation in `messages` messages.
fn conversation(messages: usize, bytes: usize) -> Vec<u8> {
    let per = bytes / messages;
    let text = |i: usize| format!("message {i}: {}", "lorem ipsum dolor sit amet \\\"quoted\\\" ".repeat(per / 40));
    let mut msgs = vec![serde_json::json!({"role": "system", "content": "You are terse."})];
    for i in 1..messages {
        let m = match i % 4 {
            1 | 3 => serde_json::json!({"role": "user", "content": text(i)}),
            2 if i == 2 => serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]}),
            2 => serde_json::json!({"role": "assistant", "content": text(i)}),
            _ if i == 4 => serde_json::json!({"role": "tool", "tool_call_id": "call_1", "content": text(i)}),
            _ => serde_json::json!({"role": "assistant", "content": text(i)}),
        };
        msgs.push(m);
    }
    let body = serde_json::json!({
        "model": "claude-sonnet-4", "max_tokens": 1024, "temperature": 0.2, "messages": msgs,
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let body = conversation(200, 2 * 1024 * 1024);
    let out = match request_to_anthropic(&body, "claude-sonnet-4-20250514", 4096) {
        Ok(r) => r.body,
        Err(e) => panic!("bench body does not translate: {e}"),
    };
    println!("input {} bytes, 200 messages → Anthropic body {} bytes ({:.3}×)", body.len(), out.len(), out.len() as f64 / body.len() as f64);
    let mut g = c.benchmark_group("translate_2mib_200_messages");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("openai_inspect_and_rewrite", |b| {
        b.iter(|| {
            let r = inspect(black_box(&body)).map(|r| r.upstream_body(&body, "m"));
            black_box(r.is_ok())
        })
    });
    g.bench_function("to_anthropic", |b| b.iter(|| black_box(request_to_anthropic(black_box(&body), "claude-sonnet-4-20250514", 4096).is_ok())));
    // Inbound (`POST /v1/messages` to a model served over the chat API): the same conversation
    // as an Anthropic client sends it, to the chat form, which is then inspected as any chat
    // request is.
    let chat = match request_to_chat(&out) {
        Ok(i) => i.chat,
        Err(e) => panic!("bench body does not translate back: {e}"),
    };
    println!("Anthropic body {} bytes → chat body {} bytes ({:.3}×)", out.len(), chat.len(), chat.len() as f64 / out.len() as f64);
    g.bench_function("from_anthropic_and_inspect", |b| {
        b.iter(|| {
            let r = request_to_chat(black_box(&out)).ok().map(|i| inspect(&i.chat).is_ok());
            black_box(r)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
