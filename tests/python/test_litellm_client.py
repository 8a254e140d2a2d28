"""LiteLLM as a client (its OpenAI-compatible provider pointed at joule): the spend LiteLLM
computes for a call is joule's `usage.cost` — the number it reads from the usage block — so the
routing fee and energy part are billed as joule billed them, not from LiteLLM's own price list
(which does not know joule's models at all)."""

import os
import warnings

# LiteLLM fetches its price list from GitHub at import unless told to use its bundled copy; the
# tests make no traffic beyond the loopback.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm  # noqa: E402
import pytest  # noqa: E402

from conftest import KEY  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.mark.parametrize("model", ["llama-sdk", "claude-sdk"])
def test_spend_equals_joules_cost(gateway, model):
    with warnings.catch_warnings():
        # A cost LiteLLM cannot read warns on every call (PydanticSerializationUnexpectedValue
        # … field_name='cost'); LiteLLM's own unrelated warnings are left alone.
        warnings.filterwarnings("error", message=".*cost.*")
        r = litellm.completion(model=f"openai/{model}", api_base=gateway, api_key=KEY, messages=MESSAGES, max_retries=0)
    cost = r.usage.cost
    assert isinstance(cost, float) and cost > 0
    assert r._hidden_params["response_cost"] == pytest.approx(cost, abs=1e-12)
    assert litellm.completion_cost(completion_response=r) == pytest.approx(cost, abs=1e-12)


def test_streamed_spend_equals_joules_cost(gateway):
    chunks = list(
        litellm.completion(
            model="openai/llama-sdk",
            api_base=gateway,
            api_key=KEY,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            max_retries=0,
        )
    )
    built = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    reported = [c.usage.cost for c in chunks if getattr(c, "usage", None) is not None and getattr(c.usage, "cost", None)]
    assert reported, "the final usage chunk carries joule's cost"
    assert litellm.completion_cost(completion_response=built) == pytest.approx(reported[-1], abs=1e-12)
