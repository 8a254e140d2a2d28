"""The Batch API through the official OpenAI Python SDK: `client.files.create`,
`client.batches.create/retrieve/list/cancel`, `client.files.content`.

joule runs with an SQLite store and a hand-made energy trace replayed at 240x, so a one-hour
completion window passes in 15 s. Two data centers: `dear` is flat at 80 $/MWh, `cheap` is
80 too except from 01:00 to 01:30 every day, when it is -40. The replay starts on the third
day at 00:00 with two days of history, so the scheduler's forecast knows the dip is coming.
Upstream calls are counted at the mocks (`GET /_mock/stats`).
"""

import contextlib
import hashlib
import json
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import start_demo, start_joule, start_mock

KEY = "sk-python-batch-key"
ADMIN = "python-batch-admin"
MODEL = "llama-batch"
SPEED = 240


def trace() -> str:
    rows = ["location,iso,market,interval_start,interval_minutes,usd_per_mwh"]
    for day in (2, 3, 4):
        for q in range(96):
            h, m = divmod(q * 15, 60)
            t = f"2023-07-0{day}T{h:02}:{m:02}:00Z"
            rows.append(f"Cheap,TEST,RT,{t},15,{-40 if h == 1 and m < 30 else 80}")
            rows.append(f"Dear,TEST,RT,{t},15,80")
    return "\n".join(rows) + "\n"


def config(tmp: Path, cheap_url: str, dear_url: str, batch: str = ""):
    (tmp / "trace.csv").write_text(trace())

    def make(port: int, admin: int) -> str:
        deployments = "".join(
            f"""
[[models.deployments]]
id = "{dc}-dep"
data_center = "{dc}"
url = "{url}"
base_price_input = 0.1
base_price_output = 0.2
gpu = {{ node_kw = 10.0, prefill_tokens_per_s = 5000.0, decode_tokens_per_s = 500.0 }}
"""
            for dc, url in (("dear", dear_url), ("cheap", cheap_url))
        )
        return f"""
[server]
listen = ["127.0.0.1:{port}"]
admin_listen = "127.0.0.1:{admin}"
threads = 1
grace_period_s = 2

[admin]
token_sha256 = "{hashlib.sha256(ADMIN.encode()).hexdigest()}"

[store]
path = "{tmp / 'joule.db'}"

[energy.replay]
files = ["{tmp / 'trace.csv'}"]
speed = {SPEED}
start = "2d"

[batch]
tick_ms = 100
lease_ms = 1500
max_file_bytes = 100000
{batch}

[[data_centers]]
id = "cheap"
price_node = "TEST/Cheap"
pue = 1.0
[[data_centers]]
id = "dear"
price_node = "TEST/Dear"
pue = 1.0

[[models]]
id = "{MODEL}"
category = "hosted"
{deployments}

[[keys]]
name = "sdk"
sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
"""

    return make


class Joule:
    """A gateway with its two mocks, restartable on the same store."""

    def __init__(self, mock_args=(), batch: str = ""):
        self.tmp = Path(tempfile.mkdtemp(prefix="joule-py-batch-"))
        self.mocks = [start_mock(*mock_args) for _ in range(2)]
        self.make = config(self.tmp, self.mocks[0][1], self.mocks[1][1], batch)
        self.start()

    def start(self):
        self.proc, self.port, self.admin_port = start_joule(self.tmp, self.make)

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0)

    def upstream_calls(self) -> int:
        total = 0
        for _, url in self.mocks:
            with urllib.request.urlopen(url.rstrip("/").removesuffix("/v1") + "/_mock/stats", timeout=5) as r:
                total += json.load(r)["requests"]
        return total

    def admin(self, method: str, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/admin{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def close(self):
        for p in [self.proc] + [m for m, _ in self.mocks]:
            p.kill()
            p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def joule():
    j = Joule()
    yield j
    j.close()


def jsonl(n: int, model: str = MODEL) -> bytes:
    lines = [
        json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 16}})
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def wait(client: openai.OpenAI, batch_id: str, until, within: float):
    deadline = time.monotonic() + within
    while True:
        b = client.batches.retrieve(batch_id)
        if until(b):
            return b
        assert time.monotonic() < deadline, f"batch not there within {within} s: {b}"
        time.sleep(0.1)


def ended(b) -> bool:
    return b.status in ("completed", "failed", "expired", "cancelled")


def test_a_batch_runs_in_the_cheap_interval_and_its_files_add_up(joule):
    client = joule.client()
    f = client.files.create(file=("questions.jsonl", jsonl(12)), purpose="batch")
    assert f.purpose == "batch" and f.filename == "questions.jsonl" and f.bytes == len(jsonl(12))
    assert client.files.retrieve(f.id).id == f.id
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="2h", metadata={"run": "sdk"})
    assert b.status in ("validating", "in_progress") and b.request_counts.total == 12
    assert b.metadata == {"run": "sdk"}
    planned = wait(client, b.id, lambda x: (x.model_extra["joule"] or {}).get("planned_start_at"), 5)
    assert planned.model_extra["joule"]["planned_start_at"] >= b.created_at + 3000, planned
    assert joule.upstream_calls() == 0
    done = wait(client, b.id, ended, 60)
    assert done.status == "completed", done
    assert done.completed_at <= done.expires_at
    assert done.request_counts.completed == 12 and done.request_counts.failed == 0
    extra = done.model_extra["joule"]
    assert extra["data_centers"] == ["cheap"]
    lines = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(12))
    costs = [line["response"]["body"]["usage"]["cost"] for line in lines]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert abs(sum(costs) - extra["cost_usd"]) < 1e-6
    assert extra["cost_usd"] < extra["estimated_cost_at_submission_usd"]
    assert joule.upstream_calls() == 12
    assert [x.id for x in client.batches.list(limit=10)] == [b.id]
    assert {x.id for x in client.files.list()} == {f.id, done.output_file_id}
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


@contextlib.contextmanager
def slow_batch(ttft_ms: int, concurrency: int, started: int, lines: int = 30):
    """A batch of `lines` lines on slow mocks, yielded once `started` lines have completed."""
    j = Joule(mock_args=("--ttft-ms", str(ttft_ms), "--tokens", "4"), batch=f"concurrency = {concurrency}")
    try:
        client = j.client()
        f = client.files.create(file=("q.jsonl", jsonl(lines)), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")
        wait(client, b.id, lambda x: x.request_counts.completed >= started, 20)
        yield j, client, b
    finally:
        j.close()


def test_cancel_keeps_finished_lines():
    with slow_batch(ttft_ms=400, concurrency=2, started=2) as (j, client, b):
        c = client.batches.cancel(b.id)
        assert c.status in ("cancelling", "cancelled")
        done = wait(client, b.id, ended, 20)
        assert done.status == "cancelled"
        assert 2 <= done.request_counts.completed < 30
        errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
        assert all(e["error"]["code"] == "batch_cancelled" for e in errors)
        assert len(errors) + done.request_counts.completed == 30
        assert j.upstream_calls() == done.request_counts.completed


def test_bad_files_are_refused_with_line_numbers(joule):
    client = joule.client()
    dup = jsonl(2).replace(b"req-1", b"req-0")
    cases = [
        (dup, "line 2", "duplicate custom_id"),
        (jsonl(1, model="no-such-model"), "line 1", "does not exist"),
        (jsonl(1) + b"{not json}\n", "line 2", "not a JSON object"),
        (jsonl(800), "", "at most 100000"),
    ]
    for content, where, why in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.files.create(file=("bad.jsonl", content), purpose="batch")
        message = e.value.body["message"]
        assert where in message and why in message, message
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", jsonl(1)), purpose="fine-tune")
    assert list(client.files.list()) == []


def test_another_projects_key_gets_404(joule):
    keys = []
    for name in ("one", "two"):
        joule.admin("POST", "/projects", {"name": name})
        keys.append(joule.admin("POST", "/keys", {"name": f"{name}-key", "project": name})["key"])
    mine, theirs = joule.client(keys[0]), joule.client(keys[1])
    f = mine.files.create(file=("q.jsonl", jsonl(2)), purpose="batch")
    b = mine.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    for call in (
        lambda: theirs.batches.retrieve(b.id),
        lambda: theirs.batches.cancel(b.id),
        lambda: theirs.files.retrieve(f.id),
        lambda: theirs.files.content(f.id),
        lambda: theirs.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert list(theirs.batches.list()) == []
    assert mine.batches.retrieve(b.id).id == b.id


def test_sigkill_mid_batch_loses_and_duplicates_nothing():
    with slow_batch(ttft_ms=300, concurrency=3, started=6) as (j, _, b):
        j.proc.send_signal(signal.SIGKILL)
        j.proc.wait()
        j.start()
        client = j.client()
        done = wait(client, b.id, ended, 60)
        assert done.status == "completed", done
        lines = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        ids = [x["custom_id"] for x in lines]
        assert len(ids) == 30 and len(set(ids)) == 30
        calls = j.upstream_calls()
        # Every line once, plus at most the lines in flight at the kill (3 per deployment).
        assert 30 <= calls <= 36, calls


def test_a_batch_on_the_demo_completes_within_its_window(tmp_path):
    """`joule demo` as it ships (three data centers, the bundled July 2023 prices) at 600x:
    a one-hour window passes in 6 s."""
    proc, port, _ = start_demo(tmp_path, "--energy-speed", "600")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-joule-demo", max_retries=0)
        f = client.files.create(file=("demo.jsonl", jsonl(10, model="llama-3.1-8b-instruct")), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")
        done = wait(client, b.id, ended, 60)
        assert done.status == "completed", done
        assert done.completed_at <= done.expires_at
        lines = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        assert sorted(x["custom_id"] for x in lines) == sorted(f"req-{i}" for i in range(10))
        extra = done.model_extra["joule"]
        assert abs(sum(x["response"]["body"]["usage"]["cost"] for x in lines) - extra["cost_usd"]) < 1e-6
        assert extra["data_centers"] and set(extra["data_centers"]) <= {"caiso-sp15", "ercot-houston", "pjm-chicago"}, extra
    finally:
        proc.kill()
        proc.wait()
