"""The official OpenAI Python SDK's Responses API (`client.responses`) against joule's
`/v1/responses`: text, streams event by event, a function-calling round trip, json_schema,
`previous_response_id`, and kept responses read back and deleted — for a hosted model and a
Claude model (Anthropic API upstream)."""

import json

import openai
import pytest

from conftest import KEY

TEXT = " ".join(f"tok{i}" for i in range(8))
BOTH = ["llama-sdk", "claude-sdk"]
TOOLS = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look something up",
        "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
    }
]


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("model", BOTH)
def test_text(client, model):
    raw = client.responses.with_raw_response.create(model=model, input="Say hello", instructions="Be brief.")
    assert raw.headers["x-joule-deployment"]
    r = raw.parse()
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.model == model
    assert r.output_text == TEXT
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage.output_tokens == 8 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.model_extra["cost"] > 0
    assert r.instructions == "Be brief."


@pytest.mark.parametrize("model", BOTH)
def test_stream(client, model):
    events = list(client.responses.create(model=model, input=[{"role": "user", "content": "Say hello"}], stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 8 and "".join(deltas) == TEXT
    for t in ["response.output_item.added", "response.content_part.added", "response.output_text.done", "response.content_part.done", "response.output_item.done"]:
        assert t in types, types
    done = events[-1].response
    assert done.output_text == TEXT and done.usage.output_tokens == 8 and done.usage.model_extra["cost"] > 0


@pytest.mark.parametrize("model", BOTH)
def test_stream_helper_accumulates(client, model):
    with client.responses.stream(model=model, input="Say hello") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == TEXT and final.output_text == TEXT


@pytest.mark.parametrize("model", BOTH)
def test_function_calling_round_trip(client, model):
    r = client.responses.create(model=model, input="Look up x", tools=TOOLS, tool_choice="required")
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "lookup" and json.loads(calls[0].arguments) == {"arg": "value"}
    follow = client.responses.create(
        model=model,
        tools=TOOLS,
        input=[
            {"role": "user", "content": "Look up x"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": "lookup", "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "found it"},
        ],
    )
    assert follow.output_text == TEXT


def test_streamed_function_call(client):
    events = list(client.responses.create(model="llama-sdk", input="Look up x", tools=TOOLS, tool_choice="required", stream=True))
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) >= 2 and json.loads("".join(pieces)) == {"arg": "value"}
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done[0].arguments) == {"arg": "value"}
    assert events[-1].response.output[0].type == "function_call"


def test_json_schema_reaches_the_backend_as_response_format(client):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    r = client.responses.create(
        model="llama-sdk", input="json please", text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}}
    )
    assert r.status == "completed" and r.text.format.type == "json_schema"


def test_previous_response_id_continues_and_kept_responses_are_readable(client, gateway):
    first = client.responses.create(model="llama-sdk", input="Remember 42")
    second = client.responses.create(model="llama-sdk", input="What did I say?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == TEXT
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == TEXT
    deleted = client.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="llama-sdk", input="again", previous_response_id=first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_doesnotexist")


def test_unstored_responses_are_not_kept(client):
    r = client.responses.create(model="llama-sdk", input="hi", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_hosted_tools_are_refused_naming_the_type(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="llama-sdk", input="hi", tools=[{"type": "web_search_preview"}])
    assert "web_search_preview" in e.value.message


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")


def test_item_references_name_kept_output_items(client):
    first = client.responses.create(model="llama-sdk", input="Look up x", tools=TOOLS, tool_choice="required")
    call = first.output[-1]
    assert call.type == "function_call" and call.id
    follow = client.responses.create(
        model="llama-sdk",
        tools=TOOLS,
        input=[
            {"role": "user", "content": "Look up x"},
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id, "output": "found it"},
        ],
    )
    assert follow.output_text == TEXT
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="llama-sdk", input=[{"type": "item_reference", "id": "msg_unknown"}])
    assert "msg_unknown" in e.value.message
