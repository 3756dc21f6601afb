"""Every file lmforge reads, damaged three ways (emptied, cut in half, replaced by random bytes),
gives a clear lmforge error that names the file: never a traceback from deep inside a library."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.errors import LMForgeError

DAMAGE = ("empty", "truncated", "random")


def damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(random.Random(0).randbytes(max(512, min(len(data), 4096))))


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_llama_dir, smollm_path):
    """One healthy file of every kind lmforge reads, in the directories it reads them from."""
    from safetensors.torch import save_file

    from lmforge.models.lora import apply_lora, lora_state_dict
    from lmforge.training import TrainConfig, train

    root = tmp_path_factory.mktemp("healthy")
    hf = root / "hf"
    shutil.copytree(tiny_llama_dir[0], hf)
    (hf / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    (hf / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))

    binary = root / "hf-bin"  # weights in PyTorch's pickle format
    shutil.copytree(hf, binary)
    (binary / "model.safetensors").unlink()
    torch.save(lmforge.load(hf).model.state_dict(), binary / "pytorch_model.bin")

    adapter = root / "adapter"
    adapter.mkdir()
    model = lmforge.load(hf).model
    apply_lora(model, ["qkv"], 2, 4.0)
    save_file({k: v.contiguous() for k, v in lora_state_dict(model).items()}, adapter / "adapter_model.safetensors")  # fmt: skip
    settings = {"base_model": str(hf), "rank": 2, "alpha": 4.0, "targets": ["qkv"]}
    (adapter / "adapter_config.json").write_text(json.dumps(settings))
    lmforge.load(hf).tokenizer.save(adapter)

    corpus = root / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 200)
    run = root / "run"  # an lmforge bundle, and its training checkpoints
    config = TrainConfig(data=str(corpus), arch="gpt", steps=4, eval_interval=2, block_size=16,
                         batch_size=2, n_layer=1, n_embd=16, n_head=2, warmup=1)  # fmt: skip
    train(config, run)

    gguf = root / "model.gguf"
    shutil.copyfile(smollm_path, gguf)

    vectors = root / "vectors"
    vectors.mkdir()
    from lmforge.embeddings import KeyedVectors

    words = KeyedVectors(["king", "queen", "man"], torch.randn(3, 4).numpy())
    words.save(vectors / "words.txt")
    words.save(vectors / "words.bin", binary=True)
    (vectors / "settings.yaml").write_text("steps: 10\nlr: 0.001\n")
    (vectors / "settings.json").write_text(json.dumps({"steps": 10}))
    (vectors / "data.jsonl").write_text('{"text": "hello"}\n' * 50)
    return root


def load_model(path: Path) -> None:
    lmforge.load(path)


def load_vectors(path: Path) -> None:
    from lmforge.embeddings import KeyedVectors

    KeyedVectors.load(path)


def load_settings(path: Path) -> None:
    from lmforge.training import TrainConfig

    TrainConfig.from_file(path)


def read_corpus(path: Path) -> None:
    from lmforge.data.corpus import Corpus

    for _ in Corpus(str(path)).documents():
        pass


def resume_run(path: Path) -> None:
    from lmforge.training import TrainConfig, train

    train(TrainConfig(), path.parents[1], resume=True)


# (what is read, the file damaged (relative to the source root), how lmforge reads it)
READERS = [
    ("HF config", "hf/config.json", load_model, "hf"),
    ("generation config", "hf/generation_config.json", load_model, "hf"),
    ("tokenizer config", "hf/tokenizer_config.json", load_model, "hf"),
    ("safetensors weights", "hf/model.safetensors", load_model, "hf"),
    ("BPE vocabulary", "hf/vocab.json", load_model, "hf"),
    ("BPE merges", "hf/merges.txt", load_model, "hf"),
    ("pickled weights", "hf-bin/pytorch_model.bin", load_model, "hf-bin"),
    ("adapter config", "adapter/adapter_config.json", load_model, "adapter"),
    ("adapter weights", "adapter/adapter_model.safetensors", load_model, "adapter"),
    ("adapter tokenizer", "adapter/tokenizer.json", load_model, "adapter"),
    ("bundle config", "run/config.json", load_model, "run"),
    ("bundle weights", "run/model.safetensors", load_model, "run"),
    ("bundle tokenizer", "run/tokenizer.json", load_model, "run"),
    ("GGUF file", "model.gguf", load_model, "model.gguf"),
    ("word2vec text vectors", "vectors/words.txt", load_vectors, "vectors/words.txt"),
    ("word2vec binary vectors", "vectors/words.bin", load_vectors, "vectors/words.bin"),
    ("YAML settings", "vectors/settings.yaml", load_settings, "vectors/settings.yaml"),
    ("JSON settings", "vectors/settings.json", load_settings, "vectors/settings.json"),
    ("JSONL corpus", "vectors/data.jsonl", read_corpus, "vectors/data.jsonl"),
]


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize(("what", "file", "reader", "target"), READERS, ids=[r[0] for r in READERS])
def test_a_damaged_file_is_a_clear_error_naming_it(
    sources, tmp_path, what, file, reader, target, kind
):
    copy = tmp_path / "copy"
    top = Path(file).parts[0]
    if (sources / top).is_dir():
        shutil.copytree(sources / top, copy / top)
        if top == "adapter":  # the adapter names its base model by path
            shutil.copytree(sources / "hf", copy / "hf")
            settings = json.loads((copy / "adapter/adapter_config.json").read_text())
            settings["base_model"] = str(copy / "hf")
            (copy / "adapter/adapter_config.json").write_text(json.dumps(settings))
    else:
        copy.mkdir()
        shutil.copyfile(sources / file, copy / file)
    damage(copy / file, kind)
    if what in ("JSONL corpus", "YAML settings") and kind == "truncated":
        pytest.skip("the first lines of a line-based file are still a valid file of that kind")
    with pytest.raises(LMForgeError) as error:
        reader(copy / target)
    assert Path(file).name in str(error.value), f"the error does not name the file: {error.value}"


@pytest.mark.parametrize("kind", DAMAGE)
def test_both_damaged_training_checkpoints_are_named_with_what_is_wrong(sources, tmp_path, kind):
    run = tmp_path / "run"
    shutil.copytree(sources / "run", run)
    for name in ("last.pt", "previous.pt"):
        damage(run / "checkpoints" / name, kind)
    with pytest.raises(LMForgeError) as error:
        resume_run(run / "checkpoints" / "last.pt")
    message = str(error.value)
    assert "last.pt" in message and "previous.pt" in message, message


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("file", ["meta.json", "tokens.bin"])
def test_a_damaged_token_cache_entry_is_tokenized_again(sources, tmp_path, file, kind):
    """A cache is lmforge's own copy, so a damaged entry is rebuilt rather than reported."""
    from lmforge.data.corpus import Corpus
    from lmforge.data.tokens import tokenize_corpus
    from lmforge.tokenizers.train import train_tokenizer

    corpus = Corpus(str(sources / "corpus.txt"))
    tokenizer = train_tokenizer("char", corpus.texts())
    healthy = tokenize_corpus(corpus, tokenizer, root=tmp_path).tolist()
    (entry,) = tmp_path.iterdir()
    damage(entry / file, kind)
    assert tokenize_corpus(corpus, tokenizer, root=tmp_path).tolist() == healthy
