"""The official OpenAI Python SDK, unmodified, against joule."""

import openai
import pytest

from conftest import KEY

MODEL = "llama-sdk"
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0, timeout=30)


def test_non_stream(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    # The cheapest deployment fails with 500: joule fails over before any byte is sent.
    assert raw.headers["x-joule-deployment"] == "healthy"
    assert raw.headers["x-joule-data-center"] == "dc-b"
    assert raw.headers["x-request-id"].startswith("req_")
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 8


def test_stream_without_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 8
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL + "@latency@price",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens > 0


def test_models(client):
    models = client.models.list()
    ids = [m.id for m in models]
    assert ids == [MODEL, "claude-sdk", "llama-paced", "claude-paced"]
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model" and model.owned_by
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_errors_map_to_sdk_exceptions(client, gateway):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL + "@cheapest", messages=MESSAGES)
    assert "price" in e.value.message and "latency" in e.value.message
    assert e.value.status_code == 400

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages="not a list")

    bad_key = openai.OpenAI(base_url=gateway, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad_key.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert e.value.code == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.code == "model_not_found"

    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x" * (2 * 1024 * 1024)}]
        )
    assert e.value.status_code == 413
    assert e.value.code == "request_too_large"


def _check_cost(usage, price_in, price_out):
    # joule adds `cost` (the total in USD, a number) and `cost_details` to the usage object;
    # the SDK keeps unknown fields (model_extra) and exposes them as attributes too.
    total = usage.model_extra["cost"]
    cost = usage.model_extra["cost_details"]
    assert total == usage.cost and isinstance(total, float)
    assert cost["currency"] == "USD"
    assert abs(cost["input"] - usage.prompt_tokens * price_in / 1e6) < 2e-9
    assert abs(cost["output"] - usage.completion_tokens * price_out / 1e6) < 2e-9
    assert abs(total - cost["input"] - cost["output"]) < 2e-9
    assert cost["energy"] == 0.0  # these data centers have no price node
    assert cost["routing_fee"] == 0.0
    assert total > 0


def test_cost_in_non_stream_usage(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.headers["x-joule-price-input"] == "0.100000"
    assert raw.headers["x-joule-price-output"] == "0.200000"
    completion = raw.parse()
    _check_cost(completion.usage, 0.1, 0.2)


def test_cost_in_final_stream_usage_chunk(client):
    stream = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    price_in = float(stream.headers["x-joule-price-input"])
    price_out = float(stream.headers["x-joule-price-output"])
    chunks = list(stream.parse())
    assert all(c.usage is None for c in chunks[:-1])
    _check_cost(chunks[-1].usage, price_in, price_out)


def test_models_show_prices(client):
    model = client.models.retrieve(MODEL)
    extra = model.model_extra
    assert extra["price"]["currency"] == "USD"
    assert extra["best_deployment"] == "broken"  # cheapest by price, even if it then fails
    prices = {d["id"]: d["price"] for d in extra["deployments"]}
    assert prices["healthy"]["input"] == 0.1 and prices["healthy"]["output"] == 0.2
