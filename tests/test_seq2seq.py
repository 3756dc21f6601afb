"""Encoder-decoders: learning a synthetic task, cached decoding, batching, the Marian export against
transformers, resume, parallel-text reading and the errors translation users meet."""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import random
import subprocess
import sys

import httpx
import openai
import pytest
import torch

import lmforge
from lmforge.data.batches import pad_rows
from lmforge.data.parallel import (
    ParallelText,
    TokenBatches,
    encode_pairs,
    read_parallel,
)
from lmforge.device import bf16_matmul_is_fast
from lmforge.errors import CheckpointError, ConfigError
from lmforge.generation.seq2seq import source_ids
from lmforge.models.protocol import EncoderDecoder, LanguageModel
from lmforge.models.seq2seq import Seq2SeqCache, Seq2SeqConfig, Seq2SeqGRU, Seq2SeqTransformer
from lmforge.training import TrainConfig, train

LETTERS = "abcdefghij"


def _write_reversal(directory, name: str, count: int, seed: int) -> None:
    """Random strings of 3-8 letters; the target is the same letters in reverse order."""
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(count):
        words = [rng.choice(LETTERS) for _ in range(rng.randint(3, 8))]
        sources.append(" ".join(words))
        targets.append(" ".join(reversed(words)))
    (directory / f"{name}.src").write_text("\n".join(sources) + "\n")
    (directory / f"{name}.tgt").write_text("\n".join(targets) + "\n")


def _config(directory, arch: str, **overrides) -> TrainConfig:
    settings = dict(
        arch=arch,
        data=str(directory / "train.src"),
        target=str(directory / "train.tgt"),
        val_data=str(directory / "val.src"),
        val_target=str(directory / "val.tgt"),
        vocab_size=300,
        n_layer=2,
        n_embd=64,
        n_head=4,
        d_ff=128,
        hidden_size=64,
        dropout=0.0,
        batch_tokens=1024,
        block_size=32,
        steps=400,
        eval_interval=200,
        lr=3e-3,
        warmup=30,
        eval_bleu=100,
        log_interval=50,
        precision="fp32",  # (translation's default is bf16 where the CPU is fast at it)
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def reversal(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reversal")
    _write_reversal(directory, "train", 3000, seed=0)
    _write_reversal(directory, "val", 200, seed=1)
    return directory


@pytest.fixture(scope="module")
def trained(reversal):
    """Both architectures trained on the reversal task (about 20 s each)."""
    runs = {}
    for arch in ("seq2seq", "seq2seq-gru"):
        result = train(_config(reversal, arch), reversal / arch)
        runs[arch] = (result, lmforge.load(reversal / arch))
    return runs


@pytest.mark.parametrize("arch", ["seq2seq", "seq2seq-gru"])
def test_both_architectures_learn_to_reverse_strings(reversal, trained, arch):
    result, lm = trained[arch]
    assert result.train_losses[-1] < result.train_losses[0] / 3, result.train_losses[::50]
    sources = (reversal / "val.src").read_text().splitlines()
    targets = (reversal / "val.tgt").read_text().splitlines()
    translations = [r.text.strip() for r in lm.translate(sources)]
    exact = sum(t == r for t, r in zip(translations, targets, strict=True)) / len(targets)
    assert exact >= 0.99, (exact, list(zip(translations, targets, strict=True))[:5])
    assert result.evaluations[-1]["val_bleu"] > 95, result.evaluations
    assert json.loads((reversal / arch / "config.json").read_text())["model_type"] == (
        "marian" if arch == "seq2seq" else "lmforge-seq2seq-gru"
    )


@pytest.mark.parametrize(
    "kind,norm_first", [("transformer", False), ("transformer", True), ("gru", False)]
)
def test_cached_decoding_equals_recomputing_the_whole_target(kind, norm_first):
    torch.manual_seed(0)
    config = Seq2SeqConfig(
        vocab_size=50,
        kind=kind,
        d_model=32,
        n_head=4,
        n_layer=2,
        d_ff=64,
        hidden_size=24,
        norm_first=norm_first,
        pad_id=1,
    )
    model = (Seq2SeqTransformer if kind == "transformer" else Seq2SeqGRU)(config).eval()
    source, source_mask = pad_rows([[3, 4, 5, 6, 0], [7, 8, 0]], pad_id=1)
    target = torch.tensor([[0, 9, 10, 11, 12], [0, 12, 13, 14, 15]])
    with torch.no_grad():
        whole = model(source, source_mask, target)
        decoder = model.decoder(model.encode(source, source_mask))
        assert isinstance(model, EncoderDecoder) and isinstance(decoder, LanguageModel)
        cache = decoder.new_cache(2)
        first, cache = decoder(target[:, :2], cache)  # two tokens at once, then one at a time
        steps = [first] + [decoder(target[:, t : t + 1], cache)[0] for t in range(2, 5)]
        alone = model.decoder(model.encode(source[1:, :3], source_mask[1:, :3]))
        by_itself, _ = alone(target[1:], alone.new_cache(1))
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_itself[0], whole[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["seq2seq", "seq2seq-gru"])
def test_batched_translation_equals_one_at_a_time(reversal, trained, arch, monkeypatch):
    """Also when rows that finished (greedy) or sources whose beams cannot improve (beam search)
    leave the batch: the cache drops their rows."""
    _, lm = trained[arch]
    sources = (reversal / "val.src").read_text().splitlines()[:24]
    kept_rows = []
    reorder = Seq2SeqCache.reorder
    monkeypatch.setattr(
        Seq2SeqCache,
        "reorder",
        lambda cache, rows: kept_rows.append(len(rows)) or reorder(cache, rows),
    )
    for options in ({}, {"num_beams": 4}):
        kept_rows.clear()
        batched = [r.token_ids for r in lm.translate(sources, batch_size=8, **options)]
        assert kept_rows and min(kept_rows) < 8 * options.get("num_beams", 1)  # rows left
        single = [lm.translate(s, **options).token_ids for s in sources]
        assert batched == single, options


def test_the_export_is_a_marian_model_with_our_logits_and_our_beams(reversal, trained):
    transformers = pytest.importorskip("transformers")
    _, lm = trained["seq2seq"]
    directory = reversal / "seq2seq"
    hf = transformers.MarianMTModel.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    sources = (reversal / "val.src").read_text().splitlines()[:6] + ["j", "a a a a a a a a"]
    encoded = tokenizer(sources, return_tensors="pt", padding=True)
    ours_ids = source_ids(lm.model, lm.tokenizer, sources)
    assert [
        ids[: int(n)]
        for ids, n in zip(encoded.input_ids.tolist(), encoded.attention_mask.sum(1), strict=True)
    ] == ours_ids
    source, mask = pad_rows(ours_ids, lm.model.config.pad_id)
    target = torch.randint(2, lm.model.config.vocab_size, (len(sources), 7))
    target[:, 0] = lm.model.config.start_id
    with torch.no_grad():
        ours = lm.model(source, mask, target)
        theirs = hf(**encoded, decoder_input_ids=target).logits
    assert (ours - theirs).abs().max() <= 1e-4
    for beams in (1, 4):
        expected = hf.generate(**encoded, num_beams=beams, max_new_tokens=20, do_sample=False)
        eos, pad = lm.model.config.eos_id, lm.model.config.pad_id
        expected = [[t for t in row[1:] if t != pad] for row in expected.tolist()]
        got = [r.token_ids for r in lm.translate(sources, num_beams=beams, max_new_tokens=20)]
        assert got == expected, beams
        assert all(ids[-1] == eos for ids in got)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resumed_run_gives_the_same_loss_trace(reversal, tmp_path, precision):
    settings = dict(steps=30, eval_interval=15, eval_bleu=10, dropout=0.1, n_layer=1, n_embd=32)
    settings.update(n_head=2, d_ff=64, batch_tokens=512, precision=precision)
    straight = train(_config(reversal, "seq2seq", **settings), tmp_path / "straight")
    train(_config(reversal, "seq2seq", **{**settings, "steps": 20}), tmp_path / "resumed")
    resumed = train(_config(reversal, "seq2seq", **settings), tmp_path / "resumed", resume=True)
    assert straight.train_losses[-1] < 0.8 * straight.train_losses[0]
    assert resumed.train_losses == straight.train_losses
    assert resumed.evaluations[-1]["val_loss"] == straight.evaluations[-1]["val_loss"]


def test_torchrun_with_two_processes_matches_one_process(reversal, tmp_path):
    """Each process takes its share of a batch's rows; the losses and the model are one
    process's (dropout off: the processes draw different masks)."""
    args = ["--arch", "seq2seq", "--source", str(reversal / "train.src"), "--target",
            str(reversal / "train.tgt"), "--steps", "8", "--eval-interval", "8", "--eval-bleu", "0",
            "--vocab-size", "300", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
            "--d-ff", "64", "--batch-tokens", "512", "--dropout", "0", "--precision", "fp32",
            "--warmup", "2", "--lr", "3e-3"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "lmforge", "train", *args, "--out", str(tmp_path / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two += ["-m", "lmforge", "train", *args, "--out", str(tmp_path / "two")]
    for command in (one, two):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    losses = [
        torch.load(tmp_path / run / "checkpoints/last.pt", weights_only=True)["train_losses"]
        for run in ("one", "two")
    ]
    assert len(losses[0]) == 8 and losses[0][-1] < losses[0][0]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-4)
    # Adam divides by the gradients' size: where a gradient is near zero, summing in another
    # order moves a weight by up to ~lr in 8 steps; training on half the rows moves them ~10x more
    a, b = (lmforge.load(tmp_path / run).model.state_dict() for run in ("one", "two"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-3)


def test_resuming_with_another_tokenizer_is_refused(reversal, tmp_path):
    config = _config(reversal, "seq2seq", steps=10, eval_interval=10, eval_bleu=0)
    train(config, tmp_path / "run")
    other = tmp_path / "other"
    train(
        _config(reversal, "seq2seq", steps=1, eval_interval=1, eval_bleu=0, vocab_size=262), other
    )
    (tmp_path / "run" / "tokenizer.json").write_bytes((other / "tokenizer.json").read_bytes())
    with pytest.raises(CheckpointError, match="tokenizer.json does not match"):
        train(config, tmp_path / "run", resume=True)


def test_token_batches_resume_where_they_stopped():
    lines = [" ".join(["w"] * (i % 7 + 1)) for i in range(200)]
    pairs, _ = encode_pairs(
        ParallelText(lines, lines), lambda text: [2] * len(text.split()), eos_id=0, max_len=20
    )
    batches = TokenBatches(pairs, 64, pad_id=1, start_id=0, seed=3)
    for _ in range(7):
        batches.next()
    state = copy.deepcopy(batches.state_dict())
    expected = [batches.next()[0].source for _ in range(40)]  # crosses an epoch's end
    again = TokenBatches(pairs, 64, pad_id=1, start_id=0, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(a, again.next()[0].source) for a in expected)
    assert sorted(i for b in batches.batches for i in b) == list(range(len(pairs)))
    assert all(b.numel() <= 64 for b in expected)  # rows x longest source within the budget


def test_parallel_text_from_two_files_a_tsv_a_jsonl_and_gzip(tmp_path):
    (tmp_path / "a.de").write_text("eins\n\nzwei\ndrei\n")
    (tmp_path / "a.en").write_text("one\ntwo-orphan\ntwo\n\n")
    text = read_parallel(tmp_path / "a.de", tmp_path / "a.en")
    assert (text.sources, text.targets, text.skipped_empty) == (["eins", "zwei"], ["one", "two"], 2)
    with gzip.open(tmp_path / "b.tsv.gz", "wt", encoding="utf-8") as handle:
        handle.write("Haus\thouse\nBaum\ttree\n")
    assert read_parallel(tmp_path / "b.tsv.gz").targets == ["house", "tree"]
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"de": "Katze", "en": "cat"}) + "\n" + json.dumps({"de": "Hund", "en": "dog"})
    )
    assert read_parallel(tmp_path / "c.jsonl", fields=("de", "en")).sources == ["Katze", "Hund"]


def test_bad_parallel_text_is_a_clear_error(tmp_path):
    (tmp_path / "x.de").write_text("a\nb\nc\n")
    (tmp_path / "x.en").write_text("a\nb\n")
    with pytest.raises(ConfigError, match=r"x.de has a line 3 but .*x.en ends after line 2"):
        read_parallel(tmp_path / "x.de", tmp_path / "x.en")
    (tmp_path / "y.tsv").write_text("only one column\n")
    with pytest.raises(ConfigError, match=r"y.tsv:1: expected a source and a target"):
        read_parallel(tmp_path / "y.tsv")
    (tmp_path / "z.jsonl").write_text('{"source": "a"}\n')
    with pytest.raises(ConfigError, match=r"z.jsonl:1: expected a JSON object with the fields"):
        read_parallel(tmp_path / "z.jsonl")
    with pytest.raises(ConfigError, match="give --target too"):
        read_parallel(tmp_path / "x.de")


def test_a_source_longer_than_the_model_is_an_error_or_truncated(trained):
    _, lm = trained["seq2seq"]
    long = " ".join(["a"] * 100)
    with pytest.raises(ConfigError, match=r"source 0 has \d+ tokens .* at most 32; .*truncate"):
        lm.translate(long)
    assert lm.translate(long, truncate=True).finish_reason in ("eos", "length")


def test_translation_and_language_models_refuse_each_others_verbs(trained, tmp_path):
    _, lm = trained["seq2seq"]
    with pytest.raises(ConfigError, match="encoder-decoder .* cannot chat: use translate"):
        lm.chat([{"role": "user", "content": "hello"}])
    decoder_only = lmforge.api.LM(
        lmforge.models.presets.build_model("gpt", 64, 16, preset="nano"), lm.tokenizer, "tiny-gpt"
    )
    with pytest.raises(ConfigError, match="tiny-gpt is a decoder-only language model"):
        decoder_only.translate("a b c")
    with pytest.raises(ConfigError, match="prompt_lookup_num_tokens speculates for decoder-only"):
        lm.translate(["a b", "c d"], prompt_lookup_num_tokens=3)
    with pytest.raises(ConfigError, match="draft_model speculates for decoder-only models"):
        list(lm.stream("a b", draft_model=decoder_only))
    with pytest.raises(ConfigError, match="target=.* is for translation"):
        TrainConfig(arch="gpt", target="x.en")


def test_empty_sources_give_empty_translations_in_place(trained):
    _, lm = trained["seq2seq-gru"]
    results = lm.translate(["a b c", "", "  ", "d e"])
    assert [r.text.strip() for r in results] == ["c b a", "", "", "e d"]


def test_the_cli_trains_translates_line_by_line_and_scores(
    reversal, trained, tmp_path, monkeypatch, capsys
):
    from lmforge.cli import main

    out = tmp_path / "cli-run"
    flags = "--steps 20 --eval-interval 20 --vocab-size 300 --n-layer 1 --n-embd 32 --n-head 2 "
    flags += "--d-ff 64 --block-size 32 --eval-bleu 10 --batch-tokens 512"
    code = main(
        [
            "train",
            "--arch",
            "seq2seq",
            "--source",
            str(reversal / "train.src"),
            "--target",
            str(reversal / "train.tgt"),
            "--out",
            str(out),
            *flags.split(),
        ]
    )
    assert code == 0 and f"lmforge translate --model {out}" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model_type"] == "marian"

    model = str(reversal / "seq2seq-gru")
    monkeypatch.setattr("sys.stdin", io.StringIO("a b c\n\nj i h g\n"))
    assert main(["translate", "--model", model, "--num-beams", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["c b a", "", "g h i j"]
    assert main(["translate", "--model", model, "d e f"]) == 0
    assert capsys.readouterr().out == "f e d\n"

    score = ["eval", "--model", model, "--json", "--source", str(reversal / "val.src")]
    assert main([*score, "--reference", str(reversal / "val.tgt")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (
        result["bleu"] > 95 and result["sentences"] == 200 and "tok:13a" in result["bleu_signature"]
    )
    assert main(["chat", "--model", model]) == 2
    assert "encoder-decoder (translation) model and cannot chat" in capsys.readouterr().err


def test_compare_reports_translation_models_side_by_side(reversal, trained, tmp_path, capsys):
    from lmforge.cli import main

    runs = [str(reversal / "seq2seq"), str(reversal / "seq2seq-gru")]
    parallel = ["--source", str(reversal / "val.src"), "--reference", str(reversal / "val.tgt")]
    out = tmp_path / "report"
    assert main(["compare", *runs, *parallel, "--max-sentences", "50", "--out", str(out)]) == 0
    table = [line for line in (out / "compare.md").read_text().splitlines() if "Seq2Seq" in line]
    assert {line.split(" | ")[1] for line in table} == {"Seq2SeqTransformer", "Seq2SeqGRU"}
    assert all(float(line.split(" | ")[4]) > 90 for line in table)  # BLEU of a learned task
    assert (out / "compare.html").read_text().count("data:image/png;base64") == 2
    capsys.readouterr()
    assert main(["compare", runs[0], "--data", str(reversal / "val.src"), "--out", str(out)]) == 2
    assert "is a translation model: compare it on parallel text" in capsys.readouterr().err
    assert main(["compare", *runs, "--source", str(reversal / "val.src")]) == 2
    assert "--data TEXT (language models) or --source F and --reference F" in (
        capsys.readouterr().err
    )


def test_the_server_translates_on_completions_and_refuses_chat(reversal, trained):
    from tests.test_serve import Server

    _, lm = trained["seq2seq"]
    server = Server(lm, model_id="m", max_tokens=64, max_n=4)
    try:
        client = server.client()
        sources = ["a b c", "j i h g"]
        expected = [r.text for r in lm.translate(sources)]
        result = client.completions.create(model="m", prompt=sources, max_tokens=30, temperature=0)
        assert [c.text for c in result.choices] == expected
        assert {c.finish_reason for c in result.choices} == {"stop"}
        streamed = client.completions.create(
            model="m", prompt="d e f", max_tokens=30, temperature=0, stream=True
        )
        assert "".join(chunk.choices[0].text for chunk in streamed) == lm.translate("d e f").text
        too_long = " ".join(["a"] * 200)
        with pytest.raises(openai.BadRequestError, match="reads at most 31"):
            client.completions.create(model="m", prompt=too_long, max_tokens=5)
        with pytest.raises(openai.BadRequestError, match="translation model and cannot chat"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert httpx.get(server.url + "/health").json()["generating"] == 0
    finally:
        server.stop()


def test_the_loss_ignores_padding_and_smooths_labels():
    from lmforge.training.objectives import seq2seq_loss

    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 5), torch.tensor([[1, 2, 3], [4, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    log_probs = torch.log_softmax(logits, dim=-1)[mask]  # the 4 real positions
    nll = -log_probs.gather(1, targets[mask][:, None]).squeeze(1)
    expected = (0.9 * nll - 0.1 * log_probs.mean(dim=-1)).mean()
    torch.testing.assert_close(seq2seq_loss(logits, targets, mask, label_smoothing=0.1), expected)


def test_the_inverse_square_root_schedule():
    from lmforge.training.schedule import learning_rate

    config = TrainConfig(arch="seq2seq", schedule="inverse_sqrt", lr=1e-3, min_lr=1e-5, warmup=100)
    assert learning_rate(0, config) < learning_rate(50, config) < 1e-3
    assert learning_rate(100, config) == pytest.approx(1e-3)  # the peak, at the warmup's end
    assert learning_rate(400, config) == pytest.approx(5e-4)  # lr * sqrt(100 / 400)
    assert learning_rate(10**9, config) == 1e-5  # never below min_lr


def test_translation_settings_are_checked_up_front():
    with pytest.raises(
        ConfigError, match="tokenizer='word': a translation model trains a joint BPE"
    ):
        TrainConfig(arch="seq2seq", tokenizer="word")
    with pytest.raises(ConfigError, match="epochs is for translation runs"):
        TrainConfig(arch="gpt", epochs=2)
    with pytest.raises(ConfigError, match="label_smoothing=1.5"):
        TrainConfig(arch="seq2seq", label_smoothing=1.5)
    assert TrainConfig(arch="seq2seq").block_size == 128 and TrainConfig().block_size == 64


def test_translation_runs_default_to_the_benchmark_recipe():
    language_model, translation = TrainConfig(), TrainConfig(arch="seq2seq")
    assert (language_model.lr, language_model.warmup, language_model.steps) == (1e-3, 100, 2000)
    assert (translation.lr, translation.warmup, translation.beta2) == (7e-4, 400, 0.98)
    assert (translation.steps, translation.epochs) == (None, 11)
    assert TrainConfig(arch="seq2seq", steps=50).epochs is None  # steps given: no epochs
    assert language_model.precision == "fp32"
    assert translation.precision == ("bf16" if bf16_matmul_is_fast() else "fp32")
    assert TrainConfig(arch="seq2seq", lr=1e-3, precision="fp32").lr == 1e-3


def test_sampling_returns_n_translations_per_source(trained):
    _, lm = trained["seq2seq-gru"]
    results = lm.translate(["a b c", "d e"], do_sample=True, num_return_sequences=3, seed=0)
    assert [len(r) for r in results] == [3, 3]
    assert all(c.prompt_tokens == len(lm.tokenizer.encode("a b c")) + 1 for c in results[0])
