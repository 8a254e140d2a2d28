"""Fixtures for the OpenAI Python SDK compatibility tests.

Starts real processes on ephemeral loopback ports: two `joule mock` backends and
`joule serve` in front of them, with a 1 MiB body limit so 413 is cheap to provoke.
"""

import hashlib
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

KEY = "sk-python-sdk-test-key"
ROOT = Path(__file__).resolve().parents[2]


def joule_bin() -> str:
    path = os.environ.get("JOULE_BIN", str(ROOT / "target" / "debug" / "joule"))
    if not Path(path).exists():
        pytest.fail(f"joule binary not found at {path}; run `cargo build` first")
    return path


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port, never the same one twice in this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def start_mock(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [joule_bin(), "mock", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()  # blocks until the mock has bound its port
    if not line.startswith("mock listening on "):
        proc.kill()
        pytest.fail(f"mock did not start: {line!r}")
    return proc, line.split()[-1]


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"joule exited early:\n{log.read_text()}")
        # An HTTP answer, not just a TCP connect (which can self-connect on loopback).
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.02)  # readiness probe interval; the condition is the accepting listener
    pytest.fail(f"joule not listening after 30 s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def gateway():
    fast, fast_url = start_mock("--ttft-ms", "10", "--tokens-per-s", "200", "--tokens", "8")
    failing, failing_url = start_mock("--failure", "500")
    tmp = Path(tempfile.mkdtemp(prefix="joule-py-"))
    port, admin = free_port(), free_port()
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config = f"""
[server]
listen = ["127.0.0.1:{port}"]
admin_listen = "127.0.0.1:{admin}"
threads = 1
grace_period_s = 2

[limits]
max_body_bytes = 1048576

[[data_centers]]
id = "dc-a"
[[data_centers]]
id = "dc-b"

[[models]]
id = "llama-sdk"
category = "hosted"

[[models.deployments]]
id = "broken"
data_center = "dc-a"
url = "{failing_url}"
base_price_input = 0.01
base_price_output = 0.01

[[models.deployments]]
id = "healthy"
data_center = "dc-b"
url = "{fast_url}"
upstream_model = "upstream-llama"
base_price_input = 0.1
base_price_output = 0.2

[[keys]]
name = "sdk"
sha256 = "{digest}"
"""
    (tmp / "joule.toml").write_text(config)
    log = tmp / "joule.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [joule_bin(), "serve", "--config", str(tmp / "joule.toml")],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        wait_listening(port, proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for p in (proc, fast, failing):
            p.kill()
            p.wait()
