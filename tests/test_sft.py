"""Chat fine-tuning (SFT): the loss mask covers exactly the assistant's tokens of a conversation
rendered with SmolLM2's template, the fine-tuned model says what it was taught, and bad data is
skipped with a count or refused clearly."""

from __future__ import annotations

import json

import pytest

import lmforge
from lmforge.data.chat import IGNORE, read_conversations, render, targets_of
from lmforge.errors import ConfigError
from lmforge.tokenizers.train import train_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What colour is the sky?"},
    {"role": "assistant", "content": "The sky is blue."},
    {"role": "user", "content": "And the grass?"},
    {"role": "assistant", "content": "The grass is green, mostly."},
]


def masked_runs(example) -> list[list[int]]:
    runs, current = [], []
    for token, keep in zip(example.ids, example.mask, strict=True):
        if keep:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_the_mask_covers_exactly_the_assistant_turns(smollm):
    tokenizer = smollm.tokenizer
    example = render(tokenizer, CONVERSATION)
    text = tokenizer.decode(example.ids, skip_special_tokens=False)
    assert text == tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    runs = [tokenizer.decode(run, skip_special_tokens=False) for run in masked_runs(example)]
    assert runs == ["The sky is blue.<|im_end|>", "The grass is green, mostly.<|im_end|>"]
    unmasked = tokenizer.decode(
        [t for t, keep in zip(example.ids, example.mask, strict=True) if not keep],
        skip_special_tokens=False,
    )
    for message in CONVERSATION[:2] + CONVERSATION[3:4]:
        assert message["content"] in unmasked
    assert "<|im_start|>assistant\n" in unmasked  # the role header is the template's, not learnt
    targets = targets_of(example)
    assert len(targets) == len(example.ids) - 1
    assert sum(t != IGNORE for t in targets) == sum(example.mask[1:])


def test_a_model_without_a_template_learns_prompt_completion_as_plain_text():
    tokenizer = train_tokenizer("char", ["hello world, how are you"])
    example = render(
        tokenizer,
        [{"role": "user", "content": "how"}, {"role": "assistant", "content": "are"}],
        plain=True,
    )
    assert (
        tokenizer.decode([t for t, k in zip(example.ids, example.mask, strict=True) if k]) == "are"
    )
    assert example.ids[-1] == tokenizer.eos_ids[0] and example.mask[-1]
    with pytest.raises(ConfigError, match="no chat template"):
        render(tokenizer, CONVERSATION)


def test_conversation_files_skip_unanswered_rows_and_refuse_bad_ones(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": CONVERSATION},
        {"messages": CONVERSATION[:2]},  # ends with the user: nothing to learn
        {"prompt": "2 + 2 =", "completion": " 4"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = read_conversations(path)
    assert len(data) == 2 and data.skipped == 1 and data.plain == [False, True]
    path.write_text(json.dumps({"text": "no conversation"}) + "\n")
    with pytest.raises(ConfigError, match=r"chat.jsonl:1: expected \{\"messages\""):
        read_conversations(path)


def test_after_a_few_steps_the_model_says_what_it_was_taught(smollm_path, tmp_path):
    taught = [
        {"role": "user", "content": "What is the secret word?"},
        {"role": "assistant", "content": "The secret word is marmalade."},
    ]
    data = tmp_path / "teach.jsonl"
    data.write_text((json.dumps({"messages": taught}) + "\n") * 8)
    lm = lmforge.finetune(
        smollm_path,
        data,
        tmp_path / "run",
        task="sft",
        lora_rank=16,
        lora_alpha=32.0,
        steps=12,
        lr=3e-3,
        warmup=0,
        batch_size=2,
        val_fraction=0.0,
        eval_interval=12,
    )
    reply = lm.chat(taught[:1], max_new_tokens=12)
    assert reply.text.strip() == "The secret word is marmalade."
