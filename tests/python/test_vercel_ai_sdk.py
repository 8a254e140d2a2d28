"""The Vercel AI SDK (npm `ai` + `@ai-sdk/openai`), unmodified, under Node against joule.

Each test runs tests/node/ai_sdk.mjs in one mode and reads the JSON object on the last line
of its stdout. `openai(model)` (modes generate, stream, tools) is the Responses API,
POST /v1/responses; `openai.chat(model)` (the *-chat modes) is POST /v1/chat/completions.
scripts/setup installs the packages (npm ci in tests/node).
"""

import json
import os
import shutil
import subprocess

import pytest

from conftest import KEY, ROOT

NODE_DIR = ROOT / "tests" / "node"
SCRIPT = NODE_DIR / "ai_sdk.mjs"
NODE = shutil.which("node")

if NODE is None:
    pytest.skip("node is not installed (the Vercel AI SDK tests need Node 20+)", allow_module_level=True)
if not (NODE_DIR / "node_modules").is_dir():
    pytest.skip(
        "tests/node/node_modules is missing: run scripts/setup (npm ci in tests/node)",
        allow_module_level=True,
    )

TEXT = "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"  # what both mocks answer (8 tokens)
MODELS = ["llama-sdk", "claude-sdk"]  # an OpenAI-API deployment; one translated to Anthropic
# The streaming tests use the same two paced at 25 tokens/s (conftest), so that a client busy
# for a few tens of ms cannot make well-paced tokens look like one burst.
PACED = {"llama-sdk": "llama-paced", "claude-sdk": "claude-paced"}


def run(gateway: str, model: str, mode: str) -> dict:
    proc = subprocess.run(
        [NODE, str(SCRIPT), mode],
        env={**os.environ, "JOULE_BASE_URL": gateway, "JOULE_KEY": KEY, "JOULE_MODEL": model},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(f"ai_sdk.mjs {mode} ({model}) exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"ai_sdk.mjs {mode} printed nothing; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def check_text_result(out: dict):
    assert out["text"] == TEXT
    assert out["finishReason"] == "stop"
    assert out["usage"]["inputTokens"] > 0
    assert out["usage"]["outputTokens"] == 8
    assert out["toolCalls"] == []


def check_streamed(out: dict):
    check_text_result(out)
    times = out["deltaTimesMs"]
    assert "".join(out["deltas"]) == TEXT
    assert len(times) >= 8, f"expected a delta per token, got {out['deltas']}"
    # The paced mocks send 8 tokens 40 ms apart: streamed, they arrive over ~280 ms;
    # buffered into one answer, they would all arrive within a millisecond or two.
    assert times[-1] - times[0] > 140, f"deltas arrived in one burst: {times}; off the wire: {out['wireChunks']}"


@pytest.mark.parametrize("model", MODELS)
def test_generate(gateway, model):
    out = run(gateway, model, "generate")
    assert out["provider"] == "openai.responses"
    check_text_result(out)
    assert out["providerMetadata"]["openai"]["responseId"]


@pytest.mark.parametrize("model", MODELS)
def test_stream(gateway, model):
    out = run(gateway, PACED[model], "stream")
    assert out["provider"] == "openai.responses"
    check_streamed(out)
    assert out["providerMetadata"]["openai"]["responseId"]


@pytest.mark.parametrize("model", MODELS)
def test_tools(gateway, model):
    out = run(gateway, model, "tools")
    assert out["provider"] == "openai.responses"
    assert out["finishReason"] == "tool-calls"
    assert [(c["toolName"], c["input"]) for c in out["toolCalls"]] == [("lookup", {"arg": "value"})]
    assert out["steps"] == 1


@pytest.mark.parametrize("model", MODELS)
def test_generate_chat(gateway, model):
    out = run(gateway, model, "generate-chat")
    assert out["provider"] == "openai.chat"
    check_text_result(out)


@pytest.mark.parametrize("model", MODELS)
def test_stream_chat(gateway, model):
    out = run(gateway, PACED[model], "stream-chat")
    assert out["provider"] == "openai.chat"
    check_streamed(out)


@pytest.mark.parametrize("model", MODELS)
def test_tools_chat(gateway, model):
    out = run(gateway, model, "tools-chat")
    assert out["provider"] == "openai.chat"
    assert out["finishReason"] == "tool-calls"
    assert [(c["toolName"], c["input"]) for c in out["toolCalls"]] == [("lookup", {"arg": "value"})]
    assert out["steps"] == 1
