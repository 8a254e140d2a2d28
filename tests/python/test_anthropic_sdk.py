"""The official Anthropic Python SDK against joule's `/v1/messages`: a hosted model (joule
converts to chat completions for its OpenAI-compatible backends and back) and a Claude model
behind Anthropic-API providers (the body passes through; the cheaper provider answers 529, so
every request also fails over)."""

import json
import urllib.error
import urllib.request

import anthropic
import pytest

from conftest import KEY

HOSTED = "llama-sdk"
CLAUDE = "claude-sdk"
BOTH = [HOSTED, CLAUDE]
DEPLOYMENT = {HOSTED: "healthy", CLAUDE: "claude-ok"}
TEXT = " ".join(f"tok{i}" for i in range(8))
HELLO = [{"role": "user", "content": "Say hello"}]
TOOLS = [
    {
        "name": "lookup",
        "description": "Look something up",
        "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}},
    }
]


def base(gateway: str) -> str:
    return gateway.removesuffix("/v1")


@pytest.fixture()
def client(gateway):
    return anthropic.Anthropic(base_url=base(gateway), api_key=KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("model", BOTH)
def test_text_with_system_prompt(client, model):
    raw = client.messages.with_raw_response.create(model=model, max_tokens=64, system="Be brief.", messages=HELLO)
    assert raw.headers["x-joule-deployment"] == DEPLOYMENT[model]
    m = raw.parse()
    assert (m.type, m.role, m.stop_reason) == ("message", "assistant", "end_turn")
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == TEXT
    assert m.usage.output_tokens == 8 and m.usage.input_tokens > 0
    assert m.usage.model_extra["cost"] > 0


@pytest.mark.parametrize("model", BOTH)
def test_stream(client, model):
    deltas, delta_usage = [], None
    with client.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream:
        for event in stream:
            if event.type == "text":
                deltas.append(event.text)
            if event.type == "message_delta":
                delta_usage = event.usage
        final = stream.get_final_message()
    assert len(deltas) >= 8, "text arrives token by token"
    assert "".join(deltas) == TEXT
    assert final.content[0].text == TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 8 and final.usage.input_tokens > 0
    assert delta_usage.model_extra["cost"] > 0


@pytest.mark.parametrize("model", BOTH)
def test_tool_use_round_trip(client, model):
    m = client.messages.create(
        model=model, max_tokens=64, tools=TOOLS, tool_choice={"type": "any"}, messages=[{"role": "user", "content": "Look up x"}]
    )
    assert m.stop_reason == "tool_use"
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.name == "lookup" and call.input == {"arg": "value"} and call.id
    follow_up = client.messages.create(
        model=model,
        max_tokens=64,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Look up x"},
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "found it"}]},
        ],
    )
    assert follow_up.stop_reason == "end_turn"
    assert follow_up.content[0].text == TEXT


@pytest.mark.parametrize("model", BOTH)
def test_stream_tool_use(client, model):
    pieces = []
    with client.messages.stream(
        model=model, max_tokens=64, tools=TOOLS, tool_choice={"type": "tool", "name": "lookup"}, messages=HELLO
    ) as stream:
        for event in stream:
            if event.type == "input_json":
                pieces.append(event.partial_json)
        final = stream.get_final_message()
    assert len(pieces) >= 2, "the arguments arrive in pieces"
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "lookup" and call.input == {"arg": "value"}
    assert final.stop_reason == "tool_use"


def test_bearer_token_authenticates_too(gateway):
    c = anthropic.Anthropic(base_url=base(gateway), auth_token=KEY, api_key=None, max_retries=0, timeout=30)
    assert c.messages.create(model=HOSTED, max_tokens=16, messages=HELLO).content[0].text == TEXT


def test_bad_key_is_an_authentication_error(gateway):
    c = anthropic.Anthropic(base_url=base(gateway), api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(anthropic.AuthenticationError) as e:
        c.messages.create(model=HOSTED, max_tokens=16, messages=HELLO)
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"
    assert "sk-wrong" not in str(e.value)


def test_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=16, messages=HELLO)
    assert e.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in e.value.body["error"]["message"]


def test_bad_tag_is_a_bad_request(client):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=f"{HOSTED}@no-such-strategy", max_tokens=16, messages=HELLO)
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_server_tool_needs_an_anthropic_deployment(client):
    web_search = [{"type": "web_search_20250305", "name": "web_search"}]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=HOSTED, max_tokens=16, tools=web_search, messages=HELLO)
    assert "web_search_20250305" in e.value.body["error"]["message"]
    # A Claude route passes it through to the provider, which accepts it.
    m = client.messages.create(model=CLAUDE, max_tokens=16, tools=web_search, messages=HELLO)
    assert m.content[0].text.startswith("tok0")


def test_missing_max_tokens_is_refused_like_anthropic(gateway):
    req = urllib.request.Request(
        f"{base(gateway)}/v1/messages",
        data=json.dumps({"model": HOSTED, "messages": HELLO}).encode(),
        headers={"x-api-key": KEY, "content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30)
    assert e.value.code == 400
    body = json.loads(e.value.read())
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_count_tokens_answers_501(client):
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.count_tokens(model=HOSTED, messages=HELLO)
    assert e.value.status_code == 501
    assert e.value.body["type"] == "error"


def test_count_tokens_on_a_claude_route(client):
    r = client.messages.count_tokens(model=CLAUDE, messages=HELLO, system="Be brief.")
    assert r.input_tokens > 0
