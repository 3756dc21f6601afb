"""Fine-tuning the shipped SmolLM2 (full and LoRA): it learns, adapters save small and load
back, merging changes nothing, and the merged bundle is a Llama checkpoint transformers loads."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.training import train
from lmforge.training.config import TrainConfig

TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps on.\n" * 60


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ft") / "fox.txt"
    path.write_text(TEXT)
    return path


def finetune(text_file, smollm_path, **overrides) -> TrainConfig:
    settings = dict(
        data=str(text_file), init_from=str(smollm_path), tokenizer=str(smollm_path),
        block_size=32, batch_size=2, steps=6, warmup=0, lr=2e-3, min_lr=2e-3,
        schedule="constant", weight_decay=0.0, eval_interval=6, val_fraction=0.1,
        test_fraction=0.0, lora_rank=4, lora_alpha=8.0,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def logits(lm, text="The quick brown fox"):
    ids = torch.tensor([lm.tokenizer.encode(text)])
    with torch.no_grad():
        return lm.model(ids)[0]


def test_lora_learns_saves_a_small_adapter_and_merges_exactly(text_file, smollm_path, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = train(finetune(text_file, smollm_path), tmp_path / "adapter")
    assert adapter.train_losses[-1] < adapter.train_losses[0] - 0.5
    files = {p.name: p.stat().st_size for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_config.json" in files and "model.safetensors" not in files
    assert files["adapter_model.safetensors"] < 2_000_000  # rank-4 q/k/v/o updates only

    base = lmforge.load(smollm_path, quantize="none")
    tuned = lmforge.load(tmp_path / "adapter")
    assert not torch.allclose(logits(tuned), logits(base), atol=1e-3)
    assert tuned.tokenizer.chat_template == base.tokenizer.chat_template
    reply = tuned.chat([{"role": "user", "content": "Hi"}], max_new_tokens=5)
    assert reply.token_ids

    merged_run = train(finetune(text_file, smollm_path, merge_lora=True), tmp_path / "merged")
    assert merged_run.train_losses == adapter.train_losses  # same run, saved differently
    merged = lmforge.load(tmp_path / "merged")
    torch.testing.assert_close(logits(merged), logits(tuned), rtol=1e-4, atol=1e-4)

    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([merged.tokenizer.encode("The quick brown fox")])
    with torch.no_grad():
        expected = reference(ids).logits
    torch.testing.assert_close(logits(merged), expected, rtol=1e-4, atol=1e-4)


def test_full_finetuning_updates_every_weight_and_learns(text_file, smollm_path, tmp_path):
    result = train(
        finetune(text_file, smollm_path, lora_rank=0, lr=1e-4, min_lr=1e-4, steps=4,
                 eval_interval=4),
        tmp_path / "full",
    )  # fmt: skip
    assert result.train_losses[-1] < result.train_losses[0]
    base, tuned = (
        lmforge.load(smollm_path, quantize="none").model,
        lmforge.load(tmp_path / "full").model,
    )
    b, t = base.state_dict(), tuned.state_dict()
    assert not torch.equal(b["blocks.0.mlp.down.weight"], t["blocks.0.mlp.down.weight"])
    assert b.keys() == t.keys()


def test_lora_needs_a_pretrained_model_and_matching_targets(text_file, smollm_path, tmp_path):
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="LoRA adapts a pretrained model"):
        TrainConfig(data=str(text_file), lora_rank=4)
    with pytest.raises(ConfigError, match="match no linear layer"):
        train(finetune(text_file, smollm_path, lora_targets=["q_proj"]), tmp_path / "bad")
