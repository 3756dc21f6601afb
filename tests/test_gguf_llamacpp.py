"""llama.cpp runs what `lmforge export` writes (slow: `make test-slow` builds llama-cpp-python
into .venv-llamacpp once, ~10 minutes on 2 cores): the same logits, greedy tokens and token ids
as lmforge, for both architectures, the shipped SmolLM2, and a LoRA fine-tune of it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import lmforge
from lmforge.checkpoints.gguf_export import export_gguf
from lmforge.checkpoints.load import load_checkpoint
from lmforge.training import train
from lmforge.training.config import TrainConfig
from tests.conftest import SHARED_DATA
from tests.test_gguf_export import TEXT, logits, tiny_gpt

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LLAMACPP_PYTHON = ROOT / ".venv-llamacpp" / "bin" / "python"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
FOX = "The quick brown fox jumps over the lazy dog, and the dog sleeps on.\n"


@pytest.fixture(scope="module", autouse=True)
def llamacpp():
    if not LLAMACPP_PYTHON.exists():
        pytest.skip("llama-cpp-python is not built: `make test-slow` builds it in .venv-llamacpp")


def llama_cpp_run(model: Path, ids: list[int], greedy: int, texts: list[str], tmp: Path):
    """llama.cpp's logits at every position of `ids`, the `greedy` tokens it adds after them,
    and its token ids for each of `texts` (see `tests/llamacpp_probe.py`)."""
    (tmp / "request.json").write_text(json.dumps({"ids": ids, "greedy": greedy, "texts": texts}))
    probe = [str(LLAMACPP_PYTHON), str(ROOT / "tests" / "llamacpp_probe.py")]
    done = subprocess.run(
        [*probe, str(model), str(tmp / "request.json"), str(tmp)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"llama.cpp could not run {model}:\n{done.stderr[-3000:]}"
    result = json.loads((tmp / "result.json").read_text())
    return np.load(tmp / "logits.npy"), result["greedy"], result["tokens"]


def greedy_tokens(model, ids: list[int], n: int) -> list[int]:
    out, sequence = [], list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([sequence]))[0][0, -1].argmax()))
            sequence.append(out[-1])
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_llama_cpp_runs_our_export_with_our_logits_tokens_and_token_ids(tmp_path, family, kind):
    from lmforge.tokenizers.train import train_bpe_tokenizer

    text = SHAKESPEARE.read_text()[:100_000]
    tokenizer = train_bpe_tokenizer([text], vocab_size=512)
    model = tiny_gpt(family, std=0.25)
    path = tmp_path / f"{family}.{kind}.gguf"
    export_gguf(model, tokenizer, path, type=kind)
    ids = tokenizer.encode(text[:600])[:64]
    theirs, greedy, tokens = llama_cpp_run(path, ids, 32, [TEXT, text[:300]], tmp_path)
    # F16 weights: llama.cpp also rounds activations to f16, so compare with lmforge reading
    # the same file; F32: with the model itself
    reference = model if kind == "f32" else load_checkpoint(path).model
    ours = logits(reference, ids).numpy()
    tolerance = 1e-3 if kind == "f32" else 1e-2
    assert np.abs(theirs - ours).max() <= tolerance
    assert greedy == greedy_tokens(reference, ids, 32)
    assert tokens == [tokenizer.encode(TEXT), tokenizer.encode(text[:300])]


def test_llama_cpp_runs_smollm2_exported_f32_as_lmforge_does(tmp_path, smollm):
    path = tmp_path / "smollm2.f32.gguf"
    lmforge.export_gguf(smollm, path, type="f32")
    ids = smollm.tokenizer.encode(SHAKESPEARE.read_text()[:2000])[:64]
    theirs, greedy, tokens = llama_cpp_run(path, ids, 32, [TEXT], tmp_path)
    assert np.abs(theirs - logits(smollm.model, ids).numpy()).max() <= 1e-3
    assert greedy == greedy_tokens(smollm.model, ids, 32)
    assert tokens == [smollm.tokenizer.encode(TEXT)]


def test_llama_cpp_computes_the_same_on_our_q4_1_export_as_on_the_original(
    tmp_path, smollm, smollm_path
):
    path = tmp_path / "smollm2.q4_1.gguf"
    lmforge.export_gguf(smollm, path, type="q4_1")
    ids = smollm.tokenizer.encode(TEXT)
    (tmp_path / "original").mkdir()
    (tmp_path / "ours").mkdir()
    original = llama_cpp_run(smollm_path, ids, 16, [TEXT], tmp_path / "original")
    ours = llama_cpp_run(path, ids, 16, [TEXT], tmp_path / "ours")
    assert np.array_equal(original[0], ours[0])
    assert original[1:] == ours[1:]


def test_fine_tune_merge_export_q8_0_and_llama_cpp_generates_it(tmp_path, smollm_path):
    """The user story: LoRA fine-tune SmolLM2 on a small text, merge, export Q8_0, run it in
    llama.cpp. Its logits differ from the fine-tuned float model by about what Q8_0 weights
    cost (llama.cpp also rounds activations to 8 bits), and its greedy tokens are the same."""
    data = tmp_path / "fox.txt"
    data.write_text(FOX * 60)
    config = TrainConfig(
        data=str(data), init_from=str(smollm_path), tokenizer=str(smollm_path),
        block_size=32, batch_size=2, steps=6, warmup=0, lr=2e-3, min_lr=2e-3,
        schedule="constant", weight_decay=0.0, eval_interval=6, val_fraction=0.1,
        test_fraction=0.0, lora_rank=4, lora_alpha=8.0, merge_lora=True,
    )  # fmt: skip
    train(config, tmp_path / "tuned")
    tuned = lmforge.load(tmp_path / "tuned", compile=False)
    base = lmforge.load(smollm_path, quantize="none", compile=False)
    report = lmforge.export_gguf(tuned, tmp_path / "tuned.q8_0.gguf", type="q8_0")
    assert report.file_type == "Q8_0"
    ids = tuned.tokenizer.encode(FOX + "The quick brown")
    theirs, greedy, _ = llama_cpp_run(tmp_path / "tuned.q8_0.gguf", ids, 32, [], tmp_path)
    ours = logits(tuned.model, ids).numpy()
    assert np.abs(ours - logits(base.model, ids).numpy()).max() > 0.1  # it did fine-tune
    q8_0 = logits(load_checkpoint(tmp_path / "tuned.q8_0.gguf").model, ids).numpy()
    weights_error = np.abs(q8_0 - ours).mean()  # what Q8_0 weights alone cost
    assert np.abs(theirs - ours).mean() <= 2 * weights_error
    assert greedy == greedy_tokens(tuned.model, ids, 32)
    assert tuned.tokenizer.decode(greedy).startswith(" fox jumps over the lazy dog")  # learned
