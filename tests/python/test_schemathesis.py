"""The OpenAI OpenAPI description of the endpoints joule serves (`../shared/openai`), run with
schemathesis against the gateway (examples, coverage and fuzzing phases, every check). The only
finding allowed is the one the README explains: a schema-valid `model` that names no model
(`""`, or tags alone such as `"@price"`) is answered 400 `model_not_found` on purpose, where
the schema's checker expects a 2xx or a 404."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import KEY, ROOT

SPEC = Path(os.environ.get("JOULE_OPENAI_SPEC", ROOT.parent / "shared" / "openai" / "openai-chat-models.json"))
EXPLAINED = "You must provide a model name"


@pytest.mark.skipif(not SPEC.exists(), reason=f"{SPEC} is not beside the repository")
@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis is not installed (scripts/setup installs it)")
def test_the_openai_description_holds(gateway, tmp_path):
    out = subprocess.run(
        ["schemathesis", "run", str(SPEC), "-u", gateway, "-H", f"Authorization: Bearer {KEY}",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--max-time", "45",
         "--request-timeout", "5", "--checks", "all", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**os.environ, "NO_PROXY": "*"},
    )
    text = out.stdout + out.stderr
    assert "Tested: 3" in text, text[-3000:]
    failures = re.findall(r"^- (ST\d+|[A-Z][^\n]*)$", text, flags=re.M)
    bodies = re.findall(r"^\[(\d{3})\][^\n]*\n\n\s+`([^\n]*)`", text, flags=re.M)
    for kind in failures:
        assert "Schema-valid request rejected" in kind, f"unexplained finding {kind!r}:\n{text[-4000:]}"
    for status, body in bodies:
        assert status == "400" and EXPLAINED in body, f"unexplained answer [{status}] {body}\n{text[-4000:]}"
