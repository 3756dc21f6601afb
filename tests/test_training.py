"""Training: every architecture learns and generates, runs resume exactly, torchrun matches one
process, bundles load in transformers, checkpoints survive corruption and full disks."""

from __future__ import annotations

import errno
import math
import os
import platform
import subprocess
import sys

import pytest
import torch

import lmforge
from lmforge.errors import CheckpointError, ConfigError
from lmforge.training import Trainer, train
from lmforge.training.config import TrainConfig
from tests.conftest import SHARED_DATA

TINY = SHARED_DATA / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(TINY.read_text()[:60_000])
    return path


def small(corpus, **overrides) -> TrainConfig:
    settings = dict(
        data=str(corpus), steps=60, eval_interval=30, block_size=32, batch_size=8,
        n_layer=2, n_embd=48, n_head=2, warmup=5, lr=3e-3, min_lr=3e-4, eval_tokens=2000,
        log_interval=10, val_fraction=0.1, test_fraction=0.0,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


DECODING = [
    {},
    {"do_sample": True, "temperature": 0.8, "top_k": 20, "seed": 1},
    {"do_sample": True, "top_p": 0.9, "min_p": 0.05, "seed": 2},
    {"do_sample": True, "typical_p": 0.9, "seed": 3},
    {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3},
    {"num_beams": 3, "length_penalty": 1.0},
    {"num_beams": 2, "num_return_sequences": 2},
    {"truncate": "left", "do_sample": True, "seed": 4},
]


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru", "transformer", "gpt"])
def test_every_architecture_learns_and_generates_with_every_decoding_option(arch, corpus, tmp_path):
    result = train(small(corpus, arch=arch), tmp_path / arch)
    first, last = result.train_losses[0], sum(result.train_losses[-10:]) / 10
    assert last < first - 1.0, f"{arch}: loss {first:.3f} -> {last:.3f}"
    assert result.evaluations[-1]["val_loss"] < result.evaluations[0]["val_loss"] + 0.05
    assert (tmp_path / arch / "metrics.csv").read_text().count("\n") == 3
    assert (tmp_path / arch / "loss.png").read_bytes()[:4] == b"\x89PNG"

    lm = lmforge.load(tmp_path / arch)
    for options in DECODING:
        out = lm.generate("ROMEO:", max_new_tokens=12, **options)
        outs = out if isinstance(out, list) else [out]
        assert all(len(o.token_ids) == 12 or o.finish_reason == "eos" for o in outs), options
    # a prompt gives the same greedy tokens alone and left-padded in a batch
    alone = lm.generate("KING", max_new_tokens=10)
    batched = lm.generate(["First Citizen:\nBefore", "KING"], max_new_tokens=10)
    assert batched[1].token_ids == alone.token_ids
    streamed = "".join(e.text for e in lm.stream("KING", max_new_tokens=10))
    assert streamed == alone.text


def test_recurrent_models_refuse_speculative_decoding(corpus, tmp_path):
    train(small(corpus, arch="gru", steps=2, eval_interval=2), tmp_path / "gru")
    lm = lmforge.load(tmp_path / "gru")
    with pytest.raises(ConfigError, match="key/value cache"):
        lm.generate("KING", max_new_tokens=5, prompt_lookup_num_tokens=3)


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_a_resumed_run_gives_exactly_the_losses_of_an_uninterrupted_one(
    arch, corpus, tmp_path, monkeypatch
):
    config = small(corpus, arch=arch, steps=24, eval_interval=8, dropout=0.1)
    whole = train(config, tmp_path / "whole")

    real_step = Trainer._train_step

    def interrupted_at_19(self):
        if self.step == 19:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) after the step-16 checkpoint
        return real_step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_at_19)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "split")
    monkeypatch.undo()
    resumed = train(config, tmp_path / "split", resume=True)
    assert resumed.train_losses == whole.train_losses  # bit for bit
    assert [e.get("val_loss") for e in resumed.evaluations] == [
        e.get("val_loss") for e in whole.evaluations
    ]
    a = lmforge.load(tmp_path / "whole").model.state_dict()
    b = lmforge.load(tmp_path / "split").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_torchrun_with_two_processes_matches_one_process(sharding, corpus, tmp_path):
    args = ["--arch", "gpt", "--data", str(corpus), "--steps", "12", "--eval-interval", "12",
            "--block-size", "32", "--batch-size", "8", "--n-layer", "2", "--n-embd", "48",
            "--n-head", "2", "--warmup", "2", "--eval-tokens", "1000"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "lmforge", "train", *args, "--out", str(tmp_path / "one")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lmforge", "train", *args, "--out", str(tmp_path / "two"),
         *(["--fsdp"] if sharding == "fsdp" else [])],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]
    one = torch.load(tmp_path / "one/checkpoints/last.pt", weights_only=True)["train_losses"]
    two = torch.load(tmp_path / "two/checkpoints/last.pt", weights_only=True)["train_losses"]
    assert len(one) == len(two) == 12
    assert one[-1] < one[0] - 0.5
    assert two == pytest.approx(one, rel=1e-4, abs=1e-4)
    # the bundle written from the (possibly sharded) run matches the single-process model
    a = lmforge.load(tmp_path / "one").model.state_dict()
    b = lmforge.load(tmp_path / "two").model.state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("family, bias", [("gpt2", None), ("gpt2", False), ("llama", None)])
def test_an_exported_gpt_bundle_gives_the_same_logits_in_transformers(
    family, bias, corpus, tmp_path
):
    from transformers import AutoModelForCausalLM

    config = small(corpus, arch="gpt", family=family, bias=bias, steps=10, eval_interval=10)
    train(config, tmp_path / "run")
    ours = lmforge.load(tmp_path / "run")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "run").eval()
    ids = torch.tensor([ours.tokenizer.encode("ROMEO:\nWhat light, é")])
    with torch.no_grad():
        expected = theirs(ids).logits
        got, _ = ours.model(ids)
    assert theirs.config.model_type == family
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_gpt_starts_from_its_familys_transformers_initialisation(family):
    """GPT-2 scales its residual output projections by 1/sqrt(2 n_layer) at init; transformers'
    Llama does not (trained that way, nanoGPT's CPU setting ends ~0.01 lower in loss)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from lmforge.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("gpt", 512, 64, family=family, n_layer=8, n_head=4, n_embd=256)
    if family == "gpt2":
        config = GPT2Config(vocab_size=512, n_positions=64, n_embd=256, n_layer=8, n_head=4)
        prefix = "transformer.h.0."
        names = {"attn.out": "attn.c_proj", "mlp.down": "mlp.c_proj", "mlp.up": "mlp.c_fc"}
    else:
        config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=model.config.d_ff,
                             num_hidden_layers=8, num_attention_heads=4)  # fmt: skip
        prefix = "model.layers.0."
        names = {"attn.out": "self_attn.o_proj", "mlp.down": "mlp.down_proj",
                 "mlp.gate_up": "mlp.up_proj"}  # fmt: skip
    theirs = dict(AutoModelForCausalLM.from_config(config).named_parameters())
    ours = dict(model.named_parameters())
    std = lambda tensor: float(tensor.detach().std())  # noqa: E731
    for our_name, their_name in names.items():
        expected, got = (
            std(theirs[f"{prefix}{their_name}.weight"]),
            std(ours[f"blocks.0.{our_name}.weight"]),
        )
        assert got == pytest.approx(expected, rel=0.05), (our_name, got, expected)
    down = 0.02 / math.sqrt(2 * 8) if family == "gpt2" else 0.02
    assert std(ours["blocks.0.mlp.down.weight"]) == pytest.approx(down, rel=0.05)


def test_word_level_lstm_in_the_style_of_word_language_model(corpus, tmp_path):
    config = small(corpus, arch="lstm", tokenizer="word", optimizer="sgd", lr=20.0, min_lr=20.0,
                   schedule="constant", warmup=0, grad_clip=0.25, weight_decay=0.0,
                   block_size=35, batch_size=20, steps=40, eval_interval=20, n_embd=64)  # fmt: skip
    result = train(config, tmp_path / "words")
    lm = lmforge.load(tmp_path / "words")
    assert sum(result.train_losses[-5:]) < sum(result.train_losses[:5]) - 5 * 1.0
    uniform = math.log(lm.tokenizer.vocab_size)
    assert min(e["val_loss"] for e in result.evaluations) < uniform - 1.0
    assert "<eos>" in lm.tokenizer.backend.get_vocab()
    assert lm.generate("the king", max_new_tokens=5, num_beams=2).token_ids


def test_resume_refuses_a_changed_tokenizer(corpus, tmp_path):
    train(small(corpus, arch="gpt", steps=4, eval_interval=4), tmp_path / "run")
    from lmforge.tokenizers.train import train_char_tokenizer

    train_char_tokenizer(["xyz"]).save(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not match the tokenizer"):
        train(small(corpus, arch="gpt", steps=8), tmp_path / "run", resume=True)


def test_a_corrupted_last_checkpoint_falls_back_to_the_previous_one(corpus, tmp_path, capsys):
    config = small(corpus, arch="gpt", steps=8, eval_interval=4)
    train(config, tmp_path / "run")
    last = tmp_path / "run/checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # half-written
    resumed = train(
        small(corpus, arch="gpt", steps=12, eval_interval=4), tmp_path / "run", resume=True
    )
    assert "resuming from" in capsys.readouterr().err
    assert resumed.step == 12 and len(resumed.train_losses) == 12
    for name in ("last.pt", "previous.pt"):
        (tmp_path / "run/checkpoints" / name).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupted or half-written"):
        train(config, tmp_path / "run", resume=True)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    train(small(corpus, arch="gpt", steps=4, eval_interval=4), tmp_path / "run")
    before = (tmp_path / "run/checkpoints/last.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        CheckpointError, match="No space left on device.*previous checkpoint is intact"
    ):
        train(small(corpus, arch="gpt", steps=8, eval_interval=4), tmp_path / "run", resume=True)
    assert (tmp_path / "run/checkpoints/last.pt").read_bytes() == before
    assert not [p for p in (tmp_path / "run/checkpoints").iterdir() if p.name.startswith(".")]


def test_bad_settings_name_the_setting(corpus, tmp_path):
    cases = [
        (dict(n_embd=50, n_head=4), "n_embd=50 is not divisible by n_head=4"),
        (dict(lr=0.0), "lr=0.0"),
        (dict(block_size=0), "block_size=0"),
        (dict(batch_size=-1), "batch_size=-1"),
        (dict(optimizer="adam"), "optimizer='adam'"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            small(corpus, **overrides)
    with pytest.raises(ConfigError, match="fewer than one block"):
        train(small(corpus, block_size=60_000), tmp_path / "big")
    with pytest.raises(ConfigError, match="already holds a run"):
        train(small(corpus, steps=2, eval_interval=2), tmp_path / "again")
        train(small(corpus, steps=2, eval_interval=2), tmp_path / "again")
    with pytest.raises(ConfigError, match="unknown settings"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_config_file_and_cli_flags(corpus, tmp_path):
    from lmforge.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"data: {corpus}\narch: gru\nsteps: 6\neval_interval: 3\nblock_size: 16\n"
                      "n_embd: 32\nbatch_size: 4\n")  # fmt: skip
    assert (
        main(["train", "--config", str(config), "--steps", "4", "--out", str(tmp_path / "r")]) == 0
    )
    state = torch.load(tmp_path / "r/checkpoints/last.pt", weights_only=True)
    assert state["config"]["arch"] == "gru" and state["step"] == 4  # the flag wins over the file
    assert main(["eval", "--model", str(tmp_path / "r"), "--data", str(corpus), "--json"]) == 0
    assert main(["train", "--out", str(tmp_path / "x"), "--data", str(corpus), "--lr", "-1"]) == 2


def test_generation_runs_past_a_small_context_with_truncate_left(corpus, tmp_path):
    """A GPT trained with block 32 generates 80 tokens when asked to slide (the cache is rebuilt
    from the newest half of the text), and stops at its context otherwise."""
    train(small(corpus, arch="gpt", steps=40, eval_interval=40), tmp_path / "gpt")
    lm = lmforge.load(tmp_path / "gpt")
    prompt = lm.tokenizer.encode("ROMEO:\n")
    assert len(lm.generate(prompt, max_new_tokens=80).token_ids) == 32 - len(prompt)
    slid = lm.generate(prompt, max_new_tokens=80, truncate="left")
    assert len(slid.token_ids) == 80

    tokens, start, keep = list(prompt), 0, 16  # the same policy, written naively
    with torch.no_grad():
        for _ in range(80):
            logits, _ = lm.model(torch.tensor([tokens[start:]]))
            tokens.append(int(logits[0, -1].argmax()))
            if len(tokens) - 1 - start >= 32:
                start = len(tokens) - keep
    assert slid.token_ids == tokens[len(prompt) :]


def test_word_vectors_initialise_the_input_embedding(corpus, tmp_path, capsys):
    """`embeddings=` (--embeddings) copies word2vec vectors into a word-level model's input
    embedding, reports how many tokens got one, and `freeze_embeddings` keeps them fixed."""
    from lmforge.embeddings import read_corpus, train_word2vec

    vectors, _ = train_word2vec(read_corpus(corpus), vector_size=32, min_count=3, epochs=1)
    vectors.save(tmp_path / "vectors.txt")
    config = small(corpus, arch="lstm", tokenizer="word", lowercase=True, n_embd=32, steps=6,
                   eval_interval=6, embeddings=str(tmp_path / "vectors.txt"),
                   freeze_embeddings=True, tie_embeddings=False)  # fmt: skip
    train(config, tmp_path / "run")
    message = capsys.readouterr().err
    assert "tokens initialised from" in message and "(frozen)" in message
    lm = lmforge.load(tmp_path / "run")
    the = lm.tokenizer.encode("the")[0]
    assert lm.tokenizer.token(the) == "the"
    torch.testing.assert_close(lm.model.embed.weight[the], vectors["the"].float())
    with pytest.raises(ConfigError, match="would freeze the output layer too"):
        small(corpus, embeddings="v.txt", freeze_embeddings=True)


def test_tensorboard_logging_or_a_clear_error(corpus, tmp_path):
    import importlib.util

    config = small(corpus, arch="gru", steps=4, eval_interval=2, tensorboard=True)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            train(config, tmp_path / "run")
    else:
        train(config, tmp_path / "run")
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_plateau_schedule_divides_the_learning_rate_when_validation_stalls(corpus, tmp_path):
    """word_language_model's annealing: SGD at lr 20 overfits this small text; every evaluation
    that does not improve divides the learning rate by 4, from the next step on."""
    config = small(corpus, arch="lstm", tokenizer="word", optimizer="sgd", lr=20.0, min_lr=0.0,
                   schedule="plateau", warmup=0, grad_clip=0.25, weight_decay=0.0,
                   block_size=35, batch_size=20, steps=60, eval_interval=10, n_embd=64)  # fmt: skip
    result = train(config, tmp_path / "run")
    losses = [e["val_loss"] for e in result.evaluations]
    expected, scale = [], 1.0
    for i, loss in enumerate(losses):
        if i and loss >= min(losses[:i]):
            scale /= 4
        expected.append(20.0 * scale)
    assert scale < 1.0, losses  # the run did stall at least once
    recorded = [e["lr"] for e in result.evaluations]
    # the lr logged at an evaluation is the one its steps used: it changes one evaluation later
    assert recorded == pytest.approx([20.0, *expected[:-1]])


def test_early_stopping_ends_at_the_first_evaluation_that_misses_patience(corpus, tmp_path):
    """patience=1: the run ends at the first evaluation that does not beat the best one (SGD at
    lr 20 overfits this small text), keeps the best model, and reports that last step too."""
    config = small(corpus, arch="lstm", tokenizer="word", optimizer="sgd", lr=20.0, min_lr=0.0,
                   schedule="constant", warmup=0, grad_clip=0.25, weight_decay=0.0,
                   block_size=35, batch_size=20, steps=200, eval_interval=10, n_embd=64,
                   patience=1)  # fmt: skip
    seen = []
    result = train(config, tmp_path / "run", on_step=lambda step, loss: seen.append(step))
    losses = [e["val_loss"] for e in result.evaluations]
    assert result.stopped_early and result.step < config.steps
    assert result.step == 10 * len(losses) and seen == list(range(1, result.step + 1))
    assert losses[-1] >= min(losses[:-1])  # the stopping evaluation did not improve...
    assert all(b < a for a, b in zip(losses[:-1], losses[1:-1], strict=False))  # ...the rest did
    assert result.best_val_loss == min(losses)


def test_a_gpt_forward_compiles_into_one_graph_and_still_checks_its_context():
    """`--compile` trains through one graph: nothing in the forward pass reads a tensor back to
    Python (which would split the graph and sync every step)."""
    from lmforge.models.presets import build_model

    model = build_model("gpt", 67, 32, preset="nano")
    explanation = torch._dynamo.explain(model)(torch.randint(67, (2, 32)))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    with pytest.raises(ConfigError, match="position 32 is beyond the context length 32"):
        model(torch.randint(67, (1, 33)))
    with pytest.raises(ConfigError, match="position 40 is beyond the context length 32"):
        model(torch.randint(67, (1, 2)), positions=torch.tensor([[3, 40]]))


@pytest.mark.parametrize("n_head, n_kv_head, position", [(4, 4, "learned"), (6, 2, "rope")])
def test_short_window_attention_gives_sdpas_outputs_and_gradients(
    n_head, n_kv_head, position, monkeypatch
):
    """Training windows of up to SHORT_WINDOW tokens are attended with batched products (faster
    there than PyTorch's CPU flash kernel); logits and every gradient must be SDPA's."""
    from lmforge.models import attention, gpt

    torch.manual_seed(0)
    config = gpt.GPTConfig(vocab_size=50, d_model=48, n_layer=2, n_head=n_head,
                           n_kv_head=n_kv_head, max_seq_len=256, position=position)  # fmt: skip
    model = gpt.GPT(config)
    ids = torch.randint(50, (3, 40))
    calls = []
    short_causal = attention.short_causal

    def counted(*args):
        calls.append(1)
        return short_causal(*args)

    def logits_and_gradients():
        model.zero_grad()
        logits, _ = model(ids)
        logits.square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    monkeypatch.setattr(attention, "short_causal", counted)
    short = logits_and_gradients()
    assert len(calls) == config.n_layer
    with torch.no_grad():  # inference keeps SDPA (as fast or faster without gradients)
        torch.testing.assert_close(model(ids)[0], short[0])
    assert len(calls) == config.n_layer
    monkeypatch.setattr(attention, "SHORT_WINDOW", 0)  # every window through SDPA
    flash = logits_and_gradients()
    assert len(calls) == config.n_layer
    torch.testing.assert_close(short[0], flash[0])
    for a, b in zip(short[1], flash[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_consecutive_learned_positions_read_a_slice_with_the_gathers_results():
    """Without explicit positions, learned position embeddings are a slice of the table (its
    gradient a sum, not a scatter); logits and gradients must be the gather's."""
    from lmforge.models import gpt

    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=50, d_model=32, n_layer=1, n_head=4, max_seq_len=16))
    ids = torch.randint(50, (3, 10))

    def logits_and_gradients(**kwargs):
        model.zero_grad()
        logits, _ = model(ids, **kwargs)
        logits.square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    gather_calls = []
    model.pos_embed.register_forward_hook(lambda *args: gather_calls.append(1))
    sliced = logits_and_gradients()
    assert not gather_calls
    gathered = logits_and_gradients(positions=torch.arange(10).expand(3, 10))
    assert gather_calls == [1]
    assert torch.equal(sliced[0], gathered[0])
    for a, b in zip(sliced[1], gathered[1], strict=True):
        torch.testing.assert_close(a, b)
    cache = model.new_cache(3)  # continuing from a cache: the slice starts at its length
    model(ids[:, :6], cache=cache)
    continued, _ = model(ids[:, 6:], cache=cache)
    torch.testing.assert_close(continued, sliced[0][:, 6:])


def test_a_compiled_run_reports_each_step_and_matches_the_eager_run(corpus, tmp_path):
    """`on_step` sees every step and its loss; `compile=True` trains to the eager losses."""
    seen = []
    config = small(corpus, steps=6, eval_interval=3)
    eager = train(config, tmp_path / "eager", on_step=lambda step, loss: seen.append((step, loss)))
    assert seen == list(enumerate(eager.train_losses, start=1))
    config.compile = True
    trainer = Trainer(config, tmp_path / "compiled")
    assert isinstance(trainer.runner, torch._dynamo.eval_frame.OptimizedModule)  # really compiled
    compiled = trainer.run()
    assert compiled.train_losses == pytest.approx(eager.train_losses, rel=1e-4)


FAULTS_PER_STEP = """
import ctypes, resource, sys, torch, torch.nn.functional as F
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.training.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory
# glibc's documented starting point, 128 KiB for both; set explicitly because its dynamic mmap
# threshold otherwise makes the untuned count depend on allocation history and thread count.
libc = ctypes.CDLL("libc.so.6")
assert libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1
assert libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=65, d_model=128, n_layer=4, n_head=4, max_seq_len=64,
                      position="learned", norm="layernorm", mlp="gelu_exact"))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, 65, (12, 64))
faults = []
for step in range(25):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits, _ = model(x)
    F.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults[5:])[10])  # the median step after warm-up
"""


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_training_steps_reuse_freed_memory_instead_of_page_faulting_it_back():
    """nanoGPT's CPU model, a step at a time: with glibc's default thresholds the freed
    activations go back to the kernel and fault in again next step; the trainer's allocator
    setting keeps them."""
    faults = {}
    for mode in ("default", "tuned"):
        run = subprocess.run(
            [sys.executable, "-c", FAULTS_PER_STEP, mode], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        faults[mode] = float(run.stdout.split()[-1])
    assert faults["default"] >= 32, faults  # the problem is there to solve
    assert faults["tuned"] <= 4, faults


def test_a_time_budget_stops_the_run_after_an_evaluation_and_a_save(corpus, tmp_path):
    result = train(small(corpus, arch="gpt", max_minutes=1e-6), tmp_path / "budget")
    assert result.step == 1 and len(result.evaluations) == 1
    assert lmforge.load(tmp_path / "budget").model is not None  # the model was saved
    resumed = train(small(corpus, arch="gpt", steps=3), tmp_path / "budget", resume=True)
    assert resumed.step == 3  # the resumed session has its own budget (none here)
    with pytest.raises(ConfigError, match="max_minutes=0"):
        small(corpus, max_minutes=0)
