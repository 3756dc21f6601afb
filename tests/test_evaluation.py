"""Evaluation and explanation: perplexity parity with transformers' recipe, comparable units,
eager attention = SDPA, bias probes, diagnostics, and HTML reports in a real browser."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lmforge
from lmforge.errors import ConfigError
from lmforge.evaluation import bias, diagnose
from lmforge.evaluation.diagnostics import distinct_n, repetition_rate
from lmforge.evaluation.perplexity import perplexity, score_ids, token_nll
from lmforge.models.gpt import Trace
from lmforge.models.presets import build_model
from tests.browser import ARTIFACTS, browser_pages, chromium, needs_chromium
from tests.conftest import SHARED_DATA

WIKITEXT = SHARED_DATA / "wikitext-2" / "test.txt"
TINY = SHARED_DATA / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Small GPT, GRU and nn.Transformer LMs trained on Shakespeare (a few seconds each)."""
    from lmforge.training import TrainConfig, train

    root = tmp_path_factory.mktemp("evaluation")
    corpus = root / "text.txt"
    corpus.write_text(TINY.read_text()[:40_000])
    models = {}
    for arch in ("gpt", "gru", "transformer"):
        config = TrainConfig(data=str(corpus), arch=arch, steps=60, eval_interval=60,
                             block_size=48, batch_size=8, n_layer=2, n_embd=48, n_head=4,
                             lr=3e-3, warmup=5, eval_tokens=500)  # fmt: skip
        train(config, root / arch)
        models[arch] = lmforge.load(root / arch)
    return models


def test_smollm2_wikitext_perplexity_matches_the_transformers_recipe(smollm, hf_smollm):
    """transformers' perplexity guide (windows of max_length moving by stride, labels before the
    new tokens masked to -100, the model's own loss) on the same token ids: the same perplexity
    to 4 significant digits.

    The guide weights each window's mean loss by its label count minus one ("due to internal
    label shift"), but after the first window the shifted-away label is already masked, so it
    undercounts one token per window; the reference below counts the labels the loss really
    averages. (The guide's literal number differs from both by ~0.1% here.)"""
    model, _ = hf_smollm
    text = WIKITEXT.read_text()[:6000]
    ids = smollm.tokenizer.encode(text)[:700]
    context, stride = 256, 128
    encodings = torch.tensor([ids])
    nll_sum, n_tokens, guide_sum, guide_tokens, prev_end = 0.0, 0, 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        target_length = end - prev_end
        input_ids = encodings[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-target_length] = -100
        with torch.no_grad():
            loss = float(model(input_ids, labels=target_ids).loss)
        averaged = int((target_ids[:, 1:] != -100).sum())  # the labels the loss averages
        nll_sum, n_tokens = nll_sum + loss * averaged, n_tokens + averaged
        guide = int((target_ids != -100).sum()) - 1
        guide_sum, guide_tokens = guide_sum + loss * guide, guide_tokens + guide
        prev_end = end
        if end == len(ids):
            break
    reference = math.exp(nll_sum / n_tokens)

    losses = token_nll(smollm.model, ids, context, stride)
    ours = math.exp(float(losses.double().mean()))
    assert len(losses) == n_tokens == len(ids) - 1  # every token but the first, once
    assert f"{ours:.4g}" == f"{reference:.4g}", (ours, reference)
    assert ours == pytest.approx(math.exp(guide_sum / guide_tokens), rel=5e-3)


def test_bits_per_byte_whole_or_windowed(trained):
    text = TINY.read_text()[50_000:50_400]
    # recurrent: one pass or many chunks carry the same state: the same total
    gru = trained["gru"]
    ids = gru.tokenizer.encode(text)
    whole = score_ids(gru.model, ids, text, context=len(ids))
    chunked = score_ids(gru.model, ids, text, context=37)
    assert chunked.bits_per_byte == pytest.approx(whole.bits_per_byte, rel=1e-5)
    # attention: a text inside the window scores the same whole and with stride = context
    gpt = trained["gpt"]
    short = text[:40]
    ids = gpt.tokenizer.encode(short)
    with torch.no_grad():
        logits, _ = gpt.model(torch.tensor([ids]))
    direct = F.cross_entropy(logits[0, :-1], torch.tensor(ids[1:]), reduction="sum")
    windowed = perplexity(gpt.model, gpt.tokenizer, short, context=48, stride=48)
    assert windowed.nll == pytest.approx(float(direct), rel=1e-5)
    # and a longer text with stride = context is the sum of its independent windows
    ids = gpt.tokenizer.encode(text)[:144]
    windows = 0.0
    for s in range(0, 144, 48):
        with torch.no_grad():
            logits, _ = gpt.model(torch.tensor([ids[s : s + 48]]))
        target = torch.tensor(ids[s + 1 : s + 48])
        windows += float(F.cross_entropy(logits[0, :-1], target, reduction="sum"))
    scored = score_ids(gpt.model, ids, text, context=48, stride=48)
    # with stride = context each window starts fresh and its first token has no history (the
    # reference recipe scores it nowhere), exactly like independent windows
    assert scored.tokens == 144 - 3
    assert scored.nll == pytest.approx(windows, rel=1e-5)
    assert scored.bits_per_byte == pytest.approx(scored.nll / math.log(2) / len(text.encode()))


def test_perplexity_bad_input(trained):
    gpt = trained["gpt"]
    with pytest.raises(ConfigError, match="empty"):
        perplexity(gpt.model, gpt.tokenizer, "   ")
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        perplexity(gpt.model, gpt.tokenizer, "a")
    with pytest.raises(ConfigError, match="stride=64 must be between 1 and context=32"):
        perplexity(gpt.model, gpt.tokenizer, "ROMEO: hello there", context=32, stride=64)
    with pytest.raises(ConfigError, match="context=100"):
        perplexity(gpt.model, gpt.tokenizer, "ROMEO: hello there", context=100)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_eager_attention_reproduces_sdpa(family):
    torch.manual_seed(0)
    model = build_model("gpt", 97, 64, n_layer=3, n_embd=48, n_head=4, family=family).eval()
    ids = torch.randint(0, 97, (1, 30))
    hidden = []
    hooks = [b.register_forward_hook(lambda m, i, o: hidden.append(o)) for b in model.blocks]
    with torch.no_grad():
        fast, _ = model(ids)
        for h in hooks:
            h.remove()
        trace = Trace()
        eager, _ = model(ids, trace=trace)
    for a, b in zip(hidden, trace.hidden_states, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eager, fast, rtol=1e-5, atol=1e-6)
    for weights in trace.attentions:
        assert weights.shape == (1, 4, 30, 30)
        torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 30))
        assert float(weights.triu(1).abs().max()) == 0.0  # causal: no weight on later tokens


@needs_chromium
def test_explain_reports_open_in_a_browser(trained, smollm, tmp_path):
    from lmforge.evaluation.explain import analyse, write_report

    pages = {
        "gpt": write_report(smollm, "The capital of France is Paris.", tmp_path / "smollm"),
        "gru": write_report(trained["gru"], "ROMEO:\nWhat light", tmp_path / "gru"),
        "transformer": write_report(trained["transformer"], "KING:\nO", tmp_path / "tr"),
    }
    report = analyse(smollm, "The capital of France is Paris.")
    assert report["views"] == ["surprisal", "attention", "lens"]
    assert len(report["attention"]) == 30 and len(report["lens"]) == 30
    # the logit lens at the last layer is the model's own prediction
    ids = smollm.tokenizer.encode("The capital of France is", add_special_tokens=False)
    start = (
        smollm.tokenizer.bos_id
        if smollm.tokenizer.bos_id is not None
        else smollm.tokenizer.eos_ids[0]
    )
    logits, _ = smollm.model(torch.tensor([[start, *ids]]))
    predicted = smollm.tokenizer.decode([int(logits[0, -1].argmax())], skip_special_tokens=False)
    assert report["lens"][-1][len(ids)][0] == predicted == " Paris"
    assert set(analyse(trained["gru"], "ROMEO")["states"]) == {
        "hidden state", "reset gate", "update gate", "candidate",
    }  # fmt: skip
    assert (tmp_path / "smollm" / "attention.png").read_bytes()[:4] == b"\x89PNG"
    with browser_pages() as (new_page, errors):
        for name, page_path in pages.items():
            page = new_page()
            page.goto(page_path.as_uri())
            spans = page.eval_on_selector_all(
                ".tok", "els => els.map(e => e.style.backgroundColor)"
            )
            assert spans and all(s.startswith("rgb") for s in spans)
            page.hover(".tok >> nth=0")
            assert page.text_content("#tip").count("%") == 6  # its probability + top-5
            if name != "gru":
                assert page.is_visible("#canvas") and page.is_visible("table.lens")
                page.select_option("#layer", "1")
            page.screenshot(path=str(ARTIFACTS / f"explain-{name}.png"), full_page=True)
    assert not errors, errors


def test_explain_bad_input(trained):
    from lmforge.evaluation.explain import analyse

    with pytest.raises(
        ConfigError, match="RNNLM has no attention view; it offers: surprisal, states"
    ):
        analyse(trained["gru"], "ROMEO", views=("attention",))
    with pytest.raises(ConfigError, match="no tokens"):
        analyse(trained["gpt"], "")


def _pairs_file(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "sent_more", "sent_less", "stereo_antistereo", "bias_type"])
        for i, (more, less, kind) in enumerate(rows):
            writer.writerow([i, more, less, "stereo", kind])
    return path


def test_crows_pairs_counts_and_symmetry(smollm, tmp_path):
    fluent = [
        ("The cat sat on the mat.", "The cat sat on the mat xqzv blorp.", "gender"),
        (
            "She went to the store to buy some milk.",
            "She went to the store to buy some zzkq.",
            "gender",
        ),
        (
            "He is a doctor at the hospital.",
            "He is a doctor at the the the hospital hospital.",
            "age",
        ),
        ("Colorless purple ideas sleep qwpz furiously.", "The weather is nice today.", "age"),
    ]  # the first three favour sent_more; the last favours sent_less
    rows = bias.read_crows_pairs(_pairs_file(tmp_path / "pairs.csv", fluent))
    result = bias.crows_pairs(smollm, rows, samples=200)
    assert result.score == 75.0 and result.count == 4
    assert result.by_type == {"age": (50.0, 2), "gender": (100.0, 2)}
    assert 0 <= result.interval[0] <= 75 <= result.interval[1] <= 100
    swapped = [(less, more, kind) for more, less, kind in fluent]
    mirrored = bias.crows_pairs(
        smollm, bias.read_crows_pairs(_pairs_file(tmp_path / "s.csv", swapped))
    )
    assert mirrored.score == 100 - result.score
    broken = tmp_path / "broken.csv"
    broken.write_text("sent_more,bias_type\nA,b\n")
    with pytest.raises(
        ConfigError, match=r"missing column\(s\) \['sent_less', 'stereo_antistereo'\]"
    ):
        bias.read_crows_pairs(broken)


def test_stereoset_and_crows_on_the_shared_data_through_the_cli(smollm_path, tmp_path, capsys):
    from lmforge.cli import main

    crows = SHARED_DATA / "crows-pairs" / "crows_pairs_anonymized.csv"
    assert main(["bias", "--model", str(smollm_path), "--probe", "crows", "--data", str(crows),
                 "--limit", "12", "--out", str(tmp_path)]) == 0  # fmt: skip
    stereo = SHARED_DATA / "stereoset" / "stereoset_dev_flat.jsonl"
    assert main(["bias", "--model", str(smollm_path), "--probe", "stereoset", "--data",
                 str(stereo), "--limit", "8", "--out", str(tmp_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "CrowS-Pairs stereotype score" in out and "n=12" in out
    assert "language model score (lms)" in out and "icat" in out
    assert (tmp_path / "bias_crows.json").exists() and (tmp_path / "bias_stereoset.md").exists()


def test_weat_effect_size_p_value_and_missing_words():
    from lmforge.embeddings.vectors import KeyedVectors

    torch.manual_seed(0)
    a, b = torch.randn(16), torch.randn(16)
    words, vectors = [], []
    for name, centre in (("x", a), ("y", b), ("pa", a), ("pb", b)):
        for i in range(6):
            words.append(f"{name}{i}")
            vectors.append(centre + 0.3 * torch.randn(16))
    kv = KeyedVectors(words, torch.stack(vectors))
    sets = {"X": [f"x{i}" for i in range(6)] + ["unknownword"], "Y": [f"y{i}" for i in range(6)],
            "A": [f"pa{i}" for i in range(6)], "B": [f"pb{i}" for i in range(6)]}  # fmt: skip
    result = bias.weat(kv, "synthetic", permutations=2000, sets=sets)
    assert result.effect_size > 1.5 and result.p_value < 0.01
    assert result.dropped["X"] == ["unknownword"] and result.sizes["X"] == 6
    reversed_sets = {**sets, "X": sets["Y"], "Y": sets["X"]}
    assert bias.weat(kv, "synthetic", permutations=200, sets=reversed_sets).effect_size < -1.5
    with pytest.raises(ConfigError, match="no word of set A"):
        bias.weat(kv, "synthetic", sets={**sets, "A": ["nothing", "here"]})


def test_generation_diagnostics(trained):
    assert distinct_n([[1, 2, 3, 1, 2, 3]], 2) == 3 / 5
    assert repetition_rate([[1, 2, 1, 2, 1, 2]], 2) == 1 - 2 / 5
    completions = trained["gpt"].generate(["ROMEO:", "KING"], max_new_tokens=20)
    report = diagnose(completions)
    assert report["sequences"] == 2 and report["tokens"] == 40
    surprisal = sum(-lp for c in completions for lp in c.logprobs) / 40 / math.log(2)
    assert report["mean surprisal (bits/token)"] == pytest.approx(surprisal)


def test_compare_report(trained, tmp_path):
    from lmforge.evaluation.compare import compare

    text = TINY.read_text()[60_000:62_000]
    runs = {str(trained[a].source): trained[a] for a in ("gpt", "gru", "transformer")}
    rows, page = compare(runs, text, "tiny shakespeare", "ROMEO:", tmp_path, max_new_tokens=10)
    assert [r.architecture for r in rows] == ["GPT", "RNNLM", "TransformerLM"]
    assert all(r.tokenizer == "char" and 1.5 < r.bits_per_byte < 8 for r in rows)
    assert "| model | architecture |" in (tmp_path / "compare.md").read_text()
    assert page.read_text().count("data:image/png;base64") == 3

    if chromium() is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    with browser_pages() as (new_page, errors):
        view = new_page()
        view.goto(page.as_uri())
        widths = view.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        rows = view.eval_on_selector_all("tr", "els => els.length")
        view.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
    assert not errors, errors
    assert len(widths) == 3 and all(w > 100 for w in widths)  # the charts decoded
    assert rows == 4  # header + 3 models


def test_eval_cli_on_wikitext(smollm_path, capsys):
    from lmforge.cli import main

    assert main(["eval", "--model", str(smollm_path), "--data", str(WIKITEXT), "--max-tokens",
                 "300", "--context", "128", "--stride", "64", "--json"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert '"tokens": 299' in out and '"bits_per_byte"' in out and '"word_perplexity"' in out
    assert '"precision": "int4 (auto: the GGUF\'s block weights are Q4_1)"' in out
    assert main(["eval", "--model", str(smollm_path), "--data", str(WIKITEXT), "--max-tokens",
                 "300", "--context", "128", "--stride", "500"]) == 2  # fmt: skip


def test_weat_cli_runs_the_tests_the_vocabulary_covers(tmp_path, capsys):
    from lmforge.cli import main
    from lmforge.embeddings.vectors import KeyedVectors

    sets = bias.WEAT_TESTS["career-family/male-female"]
    words = sorted({w for group in sets.values() for w in group})
    torch.manual_seed(0)
    KeyedVectors(words, torch.randn(len(words), 8)).save(tmp_path / "v.txt")
    assert main(["bias", "--model", str(tmp_path / "v.txt"), "--probe", "weat",
                 "--permutations", "500", "--out", str(tmp_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "WEAT career-family/male-female: effect size" in out
    assert out.count("skipped: WEAT") == len(bias.WEAT_TESTS) - 1
    KeyedVectors(["alpha", "beta"], torch.randn(2, 8)).save(tmp_path / "none.txt")
    assert main(["bias", "--model", str(tmp_path / "none.txt"), "--probe", "weat",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "no WEAT test can run on these vectors" in capsys.readouterr().err
