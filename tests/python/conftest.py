"""Fixtures for the OpenAI Python SDK compatibility tests.

Starts real processes on ephemeral loopback ports: two `joule mock` backends and
`joule serve` in front of them, with a 1 MiB body limit so 413 is cheap to provoke.

The mocks bind port 0 and say which port they got. `joule serve` cannot (pingora binds
its listeners and does not report the port), so it gets picked ports, which another
process may take before joule binds them: such a start is recognised and retried on fresh
ports, as the Rust harness does (tests/common/ports.rs has the reasons and the rules).
"""

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

KEY = "sk-python-sdk-test-key"
ANTHROPIC_KEY = "sk-ant-python-test"
ROOT = Path(__file__).resolve().parents[2]


def joule_bin() -> str:
    path = os.environ.get("JOULE_BIN", str(ROOT / "target" / "debug" / "joule"))
    if not Path(path).exists():
        pytest.fail(f"joule binary not found at {path}; run `cargo build` first")
    return path


_handed_out: set[int] = set()
START_ATTEMPTS = 5


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


def port_taken(output: str) -> bool:
    """joule's output says another process holds one of its ports (see ports.rs)."""
    return any(
        ("cannot listen on" in line and "Address already in use" in line)
        or "is in use, will try again" in line
        for line in output.splitlines()
    )


def listens_on(pid: int, port: int) -> bool:
    """Process `pid` holds the socket listening on loopback `port` (see ports.rs)."""
    if not Path("/proc/self/net/tcp").exists():
        return True  # no /proc: not checked
    sockets = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for fd in fds:
        try:
            sockets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    local = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    rows = (row.split() for row in table)
    return any(len(f) > 9 and f[1] in local and f[3] == "0A" and f"socket:[{f[9]}]" in sockets for f in rows)


def healthy(port: int) -> bool:
    # An HTTP answer, not just a TCP connect (which can self-connect on loopback).
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_serving(ports: tuple[int, int], proc: subprocess.Popen, log: Path) -> bool:
    """True once joule serves on `ports` itself; False when it lost one of them."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        exited = proc.poll() is not None  # before reading the log, so that it is complete
        output = log.read_text()
        if port_taken(output):
            return False
        if exited:
            pytest.fail(f"joule exited early:\n{output}")
        if all(listens_on(proc.pid, p) and healthy(p) for p in ports):
            return True
        time.sleep(0.02)  # readiness probe interval; the condition is the accepting listeners
    pytest.fail(f"joule not serving on {ports} after 30 s:\n{log.read_text()}")


def gateway_config(port: int, admin: int, urls: dict[str, str]) -> str:
    """The session gateway's config; `urls` holds each mock's base URL by its name in
    `gateway()`."""
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""
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
url = "{urls["failing"]}"
base_price_input = 0.01
base_price_output = 0.01

[[models.deployments]]
id = "healthy"
data_center = "dc-b"
url = "{urls["fast"]}"
upstream_model = "upstream-llama"
base_price_input = 0.1
base_price_output = 0.2

# A Claude model behind two Anthropic-API providers (the mock in Anthropic mode); the cheaper
# one is overloaded (529), so requests fail over to the other.
[[providers]]
id = "anthropic-busy"
base_url = "{urls["claude_busy"]}"
api = "anthropic"
[[providers]]
id = "anthropic"
base_url = "{urls["claude"]}"
api = "anthropic"
api_key_env = "JOULE_PY_ANTHROPIC_KEY"

[[models]]
id = "claude-sdk"
category = "third-party"
[[models.deployments]]
id = "claude-busy"
provider = "anthropic-busy"
upstream_model = "claude-sonnet-4"
list_price_input = 1.0
list_price_output = 5.0
[[models.deployments]]
id = "claude-ok"
provider = "anthropic"
upstream_model = "claude-sonnet-4"
list_price_input = 3.0
list_price_output = 15.0

# The same two APIs paced at 25 tokens/s (40 ms apart), for tests that check tokens are
# streamed: at 200/s a client busy for 20 ms (a loaded CI machine) reads several at once.
[[models]]
id = "llama-paced"
category = "hosted"
[[models.deployments]]
id = "paced"
data_center = "dc-b"
url = "{urls["paced"]}"
base_price_input = 0.1
base_price_output = 0.2

[[providers]]
id = "anthropic-paced"
base_url = "{urls["claude_paced"]}"
api = "anthropic"
api_key_env = "JOULE_PY_ANTHROPIC_KEY"

[[models]]
id = "claude-paced"
category = "third-party"
[[models.deployments]]
id = "claude-paced"
provider = "anthropic-paced"
upstream_model = "claude-sonnet-4"
list_price_input = 3.0
list_price_output = 15.0

[[keys]]
name = "sdk"
sha256 = "{digest}"
"""


def start_joule(tmp: Path, make_config, env: dict | None = None) -> tuple[subprocess.Popen, int, int]:
    """Starts `joule serve` with the config `make_config(port, admin)` written to
    `tmp/joule.toml`, on fresh ports (retried when another process took one); returns the
    process and its API and admin ports once both serve."""
    log = tmp / "joule.log"
    for _ in range(START_ATTEMPTS):
        port, admin = free_port(), free_port()
        (tmp / "joule.toml").write_text(make_config(port, admin))
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                [joule_bin(), "serve", "--config", str(tmp / "joule.toml")],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env={**os.environ, **(env or {})},
            )
        if wait_serving((port, admin), proc, log):
            return proc, port, admin
        proc.kill()
        proc.wait()
    pytest.fail(f"joule lost its ports on every attempt:\n{log.read_text()}")


def start_demo(tmp: Path, *args: str) -> tuple[subprocess.Popen, int, int]:
    """Starts `joule demo` with `args` (its store in `tmp`) on fresh ports (retried when
    another process took one); returns the process and its API and admin ports."""
    log = tmp / "joule.log"
    for attempt in range(START_ATTEMPTS):
        port, admin = free_port(), free_port()
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                [
                    joule_bin(), "demo",
                    "--listen", f"127.0.0.1:{port}",
                    "--admin-listen", f"127.0.0.1:{admin}",
                    "--store-path", str(tmp / f"demo-{attempt}.db"),
                    *args,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        if wait_serving((port, admin), proc, log):
            return proc, port, admin
        proc.kill()
        proc.wait()
    pytest.fail(f"joule lost its ports on every attempt:\n{log.read_text()}")


@pytest.fixture(scope="session")
def gateway():
    mocks = {
        "fast": start_mock("--ttft-ms", "10", "--tokens-per-s", "200", "--tokens", "8"),
        "failing": start_mock("--failure", "500"),
        "claude_busy": start_mock("--api", "anthropic", "--failure", "529"),
        "claude": start_mock("--api", "anthropic", "--tokens", "8", "--require-bearer", ANTHROPIC_KEY),
        "paced": start_mock("--ttft-ms", "10", "--tokens-per-s", "25", "--tokens", "8"),
        "claude_paced": start_mock(
            "--api", "anthropic", "--tokens-per-s", "25", "--tokens", "8", "--require-bearer", ANTHROPIC_KEY
        ),
    }
    urls = {name: url for name, (_, url) in mocks.items()}
    tmp = Path(tempfile.mkdtemp(prefix="joule-py-"))
    procs = [proc for proc, _ in mocks.values()]
    try:
        proc, port, _ = start_joule(
            tmp,
            lambda port, admin: gateway_config(port, admin, urls),
            {"JOULE_PY_ANTHROPIC_KEY": ANTHROPIC_KEY},
        )
        procs.append(proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
