"""Reliability: abandoned requests free their rows, bad values are clear 400s, a busy port exits,
a resumed run continues the run that was started, and the server survives mixed abuse."""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import time

import httpx
import pytest

from lmforge.cli import main
from tests.test_serve import MODEL, Server

CORPUS = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


@pytest.fixture(scope="module")
def server(smollm):
    running = Server(smollm, max_tokens=512, max_batch=8)
    yield running
    running.stop()


def wait_until_idle(server, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        health = httpx.get(server.url + "/health").json()
        if not health["generating"] and not health["waiting"]:
            return health
        assert time.monotonic() < deadline, f"rows still busy: {health}"
        time.sleep(0.02)


def test_abandoned_non_streaming_requests_stop_generating(server):
    """8 clients that give up on long non-streaming requests leave nothing running: their rows
    ran a few steps, not the 400 tokens asked for."""
    before = wait_until_idle(server)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0}

    def abandon(_):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                server.url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.5)
            )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(abandon, range(8)))
    after = wait_until_idle(server)
    assert after["row_steps"] - before["row_steps"] < 8 * 400 / 2, (before, after)
    ok = httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 3}, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "path, extra",
    [
        ("/v1/completions", {"prompt": "Hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
    ],
)
@pytest.mark.parametrize("seed", [2**70, -1])
def test_a_seed_out_of_range_is_a_400_naming_seed(server, path, extra, seed):
    body = {"model": MODEL, "max_tokens": 2, "seed": seed, **extra}
    response = httpx.post(server.url + path, json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "seed"


def test_the_largest_seed_samples(server):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "seed": 2**63 - 1, "n": 2}
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text


def test_serve_on_a_busy_port_exits_with_a_clear_error(tiny_gpt2_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "lmforge",
            "serve",
            "--model",
            str(tiny_gpt2_dir[0]),
            "--port",
            str(port),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"--port {port}" in done.stderr and "already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def _train(tmp_path, capsys, *flags):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS * 50)
    argv = [
        "train",
        "--data",
        str(corpus),
        "--out",
        str(tmp_path / "run"),
        "--block-size",
        "16",
        "--batch-size",
        "2",
        "--n-layer",
        "1",
        "--n-embd",
        "16",
        "--n-head",
        "2",
        "--eval-interval",
        "3",
        "--warmup",
        "1",
        *flags,
    ]
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr()


def _steps_done(tmp_path) -> int:
    import torch

    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    return state["step"]


def test_resume_continues_the_run_that_was_started(tmp_path, capsys):
    assert _train(tmp_path, capsys, "--steps", "6")[0] == 0
    code, out = _train(tmp_path, capsys, "--resume")  # no --steps: the run's own 6, not 2000
    assert code == 0 and _steps_done(tmp_path) == 6
    assert "resuming" not in out.err
    code, out = _train(tmp_path, capsys, "--resume", "--steps", "9")  # asked for on purpose
    assert code == 0 and _steps_done(tmp_path) == 9
    assert "resuming" in out.err and "steps 6 -> 9" in out.err
    code, out = _train(tmp_path, capsys, "--resume", "--n-layer", "2")
    assert code != 0 and "n_layer=2" in out.err and "Traceback" not in out.err
    assert _steps_done(tmp_path) == 9


def test_a_killed_write_leaves_no_temporary_file_behind(tmp_path, capsys):
    assert _train(tmp_path, capsys, "--steps", "3")[0] == 0
    run = tmp_path / "run"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = [run / f".loss.png.tmp-{dead}", run / "checkpoints" / f".staged-{dead}.pt"]
    alive = run / f".metrics.csv.tmp-{os.getppid()}"  # another process, still running
    for path in (*stale, alive):
        path.write_bytes(b"partial")
    assert _train(tmp_path, capsys, "--resume", "--steps", "4")[0] == 0
    assert not any(p.exists() for p in stale) and alive.exists()


def _abuse(server, clients: int, requests: int, seed: int) -> collections.Counter:
    """`clients` threads each send `requests` requests, a random mix of streaming and not,
    completed or abandoned mid-way, and malformed; returns the count of each outcome."""
    good = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0.8}
    malformed = [
        b'{"model": "x", "prompt": ',
        json.dumps({"model": MODEL, "prompt": "Hi", "seed": 2**70}).encode(),
        json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": -1}).encode(),
        json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}).encode(),
        b"\xff\xfe",
    ]

    def client(index: int) -> collections.Counter:
        rng, seen = random.Random(seed * 1000 + index), collections.Counter()
        for _ in range(requests):
            kind = rng.choice(["stream", "plain", "abandon-stream", "abandon-plain", "malformed"])
            if kind == "malformed":
                path = rng.choice(["/v1/completions", "/v1/chat/completions"])
                response = httpx.post(server.url + path, content=rng.choice(malformed), timeout=60)
                seen[f"malformed -> {response.status_code}"] += 1
            elif kind.endswith("stream"):
                with httpx.stream(
                    "POST",
                    server.url + "/v1/completions",
                    json={**good, "stream": True},
                    timeout=60,
                ) as response:
                    keep = 3 if "abandon" in kind else None
                    lines = list(itertools.islice(response.iter_lines(), keep))
                seen[f"{kind} -> {response.status_code}"] += 1
                assert lines and lines[0].startswith("data: ")
            elif kind == "plain":
                response = httpx.post(server.url + "/v1/completions", json=good, timeout=60)
                seen[f"plain -> {response.status_code}"] += 1
            else:
                try:
                    httpx.post(
                        server.url + "/v1/completions",
                        json={**good, "max_tokens": 300},
                        timeout=httpx.Timeout(60, read=rng.uniform(0.05, 0.5)),
                    )
                    seen["abandon-plain -> finished first"] += 1
                except httpx.ReadTimeout:
                    seen["abandon-plain -> abandoned"] += 1
        return seen

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)), collections.Counter())


def _check_survived(server, counts: collections.Counter, expected_greedy: str) -> None:
    health = wait_until_idle(server)
    print(
        f"\nabuse: {sum(counts.values())} requests: {dict(sorted(counts.items()))}; "
        f"rows generating at the end: {health['generating']}, waiting: {health['waiting']}"
    )
    assert health["status"] == "ok" and health["generating"] == 0 and health["waiting"] == 0
    for outcome in counts:
        if outcome.startswith(("plain", "stream", "abandon-stream")):
            assert outcome.endswith("200"), counts
        if outcome.startswith("malformed"):
            assert outcome.endswith("400"), counts
    assert _greedy(server) == expected_greedy


def _greedy(server) -> str:
    greedy = {
        "model": MODEL,
        "prompt": "The capital of France is",
        "max_tokens": 12,
        "temperature": 0,
    }
    return httpx.post(server.url + "/v1/completions", json=greedy, timeout=60).json()["choices"][0][
        "text"
    ]


def test_the_server_survives_mixed_abuse(server):
    """8 clients x 6 requests: streaming and not, finished or abandoned, and malformed."""
    expected = _greedy(server)
    _check_survived(server, _abuse(server, clients=8, requests=6, seed=0), expected)


@pytest.mark.slow
def test_soak_32_clients_with_random_abandonment(server):
    expected = _greedy(server)
    _check_survived(server, _abuse(server, clients=32, requests=20, seed=1), expected)
