"""The official OpenAI Python SDK against a Claude model behind Anthropic-API providers: joule
translates to Anthropic Messages and back, and fails over from an overloaded (529) route."""

import json

import openai
import pytest

from conftest import KEY

MODEL = "claude-sdk"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up",
            "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}},
        },
    }
]


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0, timeout=30)


def test_text_after_failover(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.headers["x-joule-deployment"] == "claude-ok"  # the cheaper route answered 529
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.choices[0].message.content.startswith("tok0 tok1")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 8
    assert r.usage.model_extra["cost"] > 0


def test_stream(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == " ".join(f"tok{i}" for i in range(8))
    assert finish == "stop"
    assert usage.completion_tokens == 8 and usage.model_extra["cost"] > 0


def test_tools(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"arg": "value"}
    # The result goes back as a tool message: translated to a tool_result block.
    follow = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES
        + [
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "42"},
        ],
        tools=TOOLS,
    )
    assert follow.choices[0].message.content.startswith("tok0")


def test_unsupported_parameter_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert "'n'" in e.value.message
