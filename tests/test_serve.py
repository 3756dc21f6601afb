"""The OpenAI-compatible server, through the official `openai` client and raw HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import httpx
import openai
import pytest

import lmforge
from tests.browser import ARTIFACTS, browser_pages, needs_chromium
from tests.serving import MODEL, Server


@pytest.fixture(scope="module")
def fast_lm(smollm):
    """float32, so server results equal `generate` exactly (bf16 rounds batched steps differently)."""
    return smollm


@pytest.fixture(scope="module")
def server(fast_lm):
    running = Server(fast_lm, max_body_bytes=20_000, max_tokens=256, max_n=4)
    yield running
    running.stop()


def test_models_and_health(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_completions_match_lmforge_generate(server, fast_lm):
    client = server.client()
    prompt = "The capital of France is"
    expected = fast_lm.generate(prompt, max_new_tokens=12, top_logprobs=2)
    result = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, logprobs=2
    )
    choice = result.choices[0]
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert result.usage.prompt_tokens == 5 and result.usage.completion_tokens == 12
    assert choice.logprobs.token_logprobs == pytest.approx(expected.logprobs, abs=1e-4)
    assert "".join(choice.logprobs.tokens) == expected.text
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    streamed = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_completions_stream_and_stop(server, fast_lm):
    client = server.client()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = fast_lm.chat(messages, max_new_tokens=30)
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=30
    )
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == "stop" and "Paris" in expected.text
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True}, logprobs=True, top_logprobs=5,
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)
    entries = [
        c.choices[0].logprobs.content[0] for c in chunks if c.choices and c.choices[0].logprobs
    ]
    assert expected.finish_reason == "eos"  # the end token is counted, but is no text to list
    assert [e.logprob for e in entries] == pytest.approx(expected.logprobs[:-1], abs=1e-4)
    assert all(len(e.top_logprobs) == 5 for e in entries)
    stopped = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=30, stop=["Paris"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == expected.text.split("Paris")[0]


def test_n_choices_with_seed(server):
    client = server.client()
    args = dict(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=1.0, n=3, seed=7)
    first = client.completions.create(**args)
    again = client.completions.create(**args)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1  # sampled rows differ


def test_errors_through_the_client(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="Hi", temperature=3.5)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="Hi")


def _post(server, path, body, **headers):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=data, headers=headers, timeout=60)


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", b'{"model": "x", "prompt": ', None),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": "ten"}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "color": "red"}, "color"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": -3}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 10**9}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "temperature": -1}, "temperature"),
        ("/v1/completions", {"model": MODEL, "prompt": "word " * 9000}, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "n": 50}, "n"),
        ("/v1/completions", {"model": MODEL, "prompt": [10**7]}, "prompt"),
        ("/v1/completions", b'{"model": "m", "prompt": "\xff\xfe"}', None),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
         "messages.0.role"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, "messages.0.content"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_400_and_the_server_keeps_serving(server, path, body, param):
    response = _post(server, path, body)
    assert response.status_code in (400, 413), response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if response.status_code == 400 and param is not None:
        assert error["param"] == param
    ok = _post(server, "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 1


def test_too_large_body_is_413(server):
    response = _post(server, "/v1/completions", {"model": MODEL, "prompt": "x" * 30_000})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_api_key_and_queue_limit(fast_lm, tiny_gpt2_dir):
    guarded = Server(fast_lm, api_key="sekrit")
    try:
        with pytest.raises(openai.AuthenticationError):
            guarded.client().models.list()
        client = openai.OpenAI(base_url=guarded.url + "/v1", api_key="sekrit", max_retries=0)
        assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=1).choices
    finally:
        guarded.stop()
    full = Server(lmforge.load(tiny_gpt2_dir[0]), max_queue=0, max_batch=2)
    try:
        too_many = _post(full, "/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "n": 2})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"
        response = _post(full, "/v1/completions", {"model": MODEL, "prompt": "Hi"})
        assert response.status_code == 429 and response.json()["error"]["code"] == "queue_full"
        chat = _post(
            full,
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        assert chat.status_code == 400 and chat.json()["error"]["code"] == "no_chat_template"
    finally:
        full.stop()


def test_concurrent_streams_are_batched(server, fast_lm):
    prompt, tokens = "In a small village by the sea", 24
    expected = fast_lm.generate(prompt, max_new_tokens=tokens).text
    before = httpx.get(server.url + "/health").json()

    def one(_):
        stream = server.client().completions.create(
            model=MODEL, prompt=prompt, max_tokens=tokens, temperature=0, stream=True
        )
        return "".join(chunk.choices[0].text for chunk in stream)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(8)))
    after = httpx.get(server.url + "/health").json()
    assert texts == [expected] * 8
    steps = after["steps"] - before["steps"]
    assert (after["row_steps"] - before["row_steps"]) / steps > 4  # rows shared decode steps


def test_disconnected_client_frees_its_place(server):
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 250,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # The abandoned request stops: the next one is served long before 250 tokens would take.
    start = time.monotonic()
    ok = _post(server, "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2})
    assert ok.status_code == 200
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/health").json()["generating"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert time.monotonic() - start < 10


@needs_chromium
def test_playground_in_a_browser(server):
    with browser_pages() as (new_page, errors):
        page = new_page(1100, 700)
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('info').textContent.includes('context')")
        page.fill("#prompt", "The capital of France is")
        page.fill("#max_tokens", "12")
        page.click("#go")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('finished')"
        )
        tokens = page.eval_on_selector_all(
            ".tok", "els => els.map(e => [e.textContent, e.style.backgroundColor, e.dataset.prob])"
        )
        page.hover(".tok >> nth=0")
        tip = page.text_content("#tip")
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert not errors, errors
    assert len(tokens) == 12 and "".join(t[0] for t in tokens).startswith(" Paris")
    assert all(t[1].startswith("rgb") for t in tokens)  # coloured by probability
    assert len({t[1] for t in tokens}) > 1
    assert tip.count("%") == 6  # the token's probability and its top-5 alternatives


def _staggered_completions(server, prompts: list[tuple[str, int]], delay: float) -> list[str]:
    """Greedy completions of (prompt, max_tokens), request i sent `i * delay` s after the first."""

    def one(item):
        index, (prompt, tokens) = item
        time.sleep(delay * index)
        body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
        return _post(server, "/v1/completions", body).json()["choices"][0]["text"]

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, enumerate(prompts)))


def test_requests_join_a_running_batch(fast_lm):
    """Staggered requests of different lengths and options share decode steps, and the cache
    timeline is shifted both ways; every result still equals `generate` alone."""
    small = Server(fast_lm, max_batch=3, cache_len=64)
    prompts = [
        ("Once upon a time", 30),
        ("The capital of France is a city that", 12),
        ("Hi", 40),
        ("In a small village by the sea there lived an old fisherman who", 20),
        ("Tell me", 25),
        ("A", 35),
    ]
    try:
        texts = _staggered_completions(small, prompts, delay=0.3)
        load = httpx.get(small.url + "/health").json()
    finally:
        small.stop()
    for (prompt, tokens), text in zip(prompts, texts, strict=True):
        assert text == fast_lm.generate(prompt, max_new_tokens=tokens).text
    assert load["row_steps"] > load["steps"]  # some steps served several requests
    assert load["shifts"] >= 2


def test_request_timeout_is_a_clear_error(fast_lm):
    slow = Server(fast_lm, request_timeout_s=0.5)
    try:
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "temperature": 0}
        response = _post(slow, "/v1/completions", body)
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        streamed = _post(slow, "/v1/completions", {**body, "stream": True}).text
        assert '"code": "timeout"' in streamed and streamed.endswith("data: [DONE]\n\n")
        assert _post(slow, "/v1/completions", {**body, "max_tokens": 2}).status_code == 200
    finally:
        slow.stop()


def test_empty_prompt_starts_from_bos_like_generate(server, fast_lm):
    body = {"model": MODEL, "prompt": "", "max_tokens": 4, "temperature": 0}
    response = _post(server, "/v1/completions", body).json()
    assert response["choices"][0]["text"] == fast_lm.generate("", max_new_tokens=4).text
    assert response["usage"]["prompt_tokens"] == 1


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_trained_recurrent_and_cache_free_models_serve_with_batching(arch, tmp_path):
    """A model trained here (a GRU keeps a hidden state per row; the nn.Transformer LM re-runs
    each row's window) serves staggered concurrent requests; each equals `generate` alone."""
    from lmforge.training import TrainConfig, train

    corpus = tmp_path / "text.txt"
    corpus.write_text((Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt").read_text()[:30_000])  # fmt: skip
    config = TrainConfig(data=str(corpus), arch=arch, steps=40, eval_interval=40, block_size=24,
                         batch_size=8, n_layer=1, n_embd=32, n_head=2, lr=3e-3, warmup=2,
                         eval_tokens=500)  # fmt: skip
    train(config, tmp_path / "run")
    lm = lmforge.load(tmp_path / "run")
    running = Server(lm, max_batch=3, cache_len=256)
    prompts = [("ROMEO:", 150), ("First Citizen:\nWe", 90), ("A", 200), ("KING", 120), ("O", 60)]
    try:
        texts = _staggered_completions(running, prompts, delay=0.01)
        load = httpx.get(running.url + "/health").json()
        info = httpx.get(running.url + "/v1/lmforge/info").json()
    finally:
        running.stop()
    for (prompt, tokens), text in zip(prompts, texts, strict=True):
        assert text == lm.generate(prompt, max_new_tokens=tokens).text
    assert load["row_steps"] > load["steps"]
    assert info


def test_timeline_drops_slots_no_running_row_needs(fast_lm):
    """Every decode step attends over the whole shared timeline, so finished rows' slots must not
    pile up: the timeline shifts left once its dead head is over half of it, and empties with the
    batch. A shifted row's next logits still equal the model run on its history alone."""
    import torch

    from lmforge.serve.rows import KVRows

    model = fast_lm.model
    rows = KVRows(model, max_batch=2, cache_len=256)
    prompt = fast_lm.encode("Once upon a time")
    histories = {0: list(prompt)}
    with torch.inference_mode():
        rows.prefill(0, prompt)
        for _ in range(20):
            histories[0].append(11)
            rows.step(histories, 0)
        rows.prefill(1, prompt)  # joins at the current slot, 20 slots after row 0's start
        histories[1] = list(prompt)
        for _ in range(5):
            for history in histories.values():
                history.append(11)
            rows.step(histories, 0)
        before = rows.cache.length
        rows.free(0)
        del histories[0]
        assert rows.cache.length == before - 20 and rows.starts == {1: 0}
        histories[1].append(11)
        logits = rows.step(histories, 0)[1]
        alone, _ = model(
            torch.tensor([histories[1]]), model.new_cache(1, len(histories[1])), last_only=True
        )
        torch.testing.assert_close(logits, alone[0, -1], atol=1e-4, rtol=1e-4)
        rows.free(1)
    assert rows.cache.length == 0
