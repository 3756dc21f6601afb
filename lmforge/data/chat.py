"""Conversations for instruction and chat fine-tuning (SFT), and the mask that puts the loss on
the assistant's tokens only.

Data is JSONL: `{"messages": [{"role": ..., "content": ...}, ...]}` (OpenAI's fine-tuning format)
or `{"prompt": ..., "completion": ...}`. A conversation is rendered with the model's own chat
template, and the loss mask is True exactly on what the assistant says: each assistant turn's text
and the end-of-turn token after it (so the model learns to stop), never the system, user or tool
turns nor the template's role headers. The assistant spans are found by rendering the
conversation up to each assistant turn (with the generation prompt) and up to its end: what the
second adds to the first is the turn. A template whose renderings are not prefixes of each other
cannot be masked this way and is an error. Prompt/completion data on a model without a template
is plain text: prompt, then completion and EOS (the loss on completion and EOS).

A conversation whose last turn is not the assistant's is skipped and counted (nothing to learn).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.data.batches import LengthBuckets, pad_rows
from lmforge.data.files import jsonl_objects
from lmforge.errors import ConfigError

IGNORE = -100  # cross-entropy's ignore_index: targets that add nothing to the loss


@dataclass
class Conversations:
    """Conversations as message lists, and how many rows were skipped (last turn not the
    assistant's)."""

    items: list[list[dict[str, Any]]]
    plain: list[bool]  # per conversation: it came as prompt/completion
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.items)


def read_conversations(path: str | Path) -> Conversations:
    """Read a JSONL file of `messages` or `prompt`/`completion` rows."""
    path = Path(path)
    items, plain, skipped = [], [], 0
    for number, row in jsonl_objects(path):
        if "messages" in row:
            messages = row["messages"]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
                for m in messages
            ):
                raise ConfigError(
                    f'{path}:{number}: messages must be a list of {{"role": ..., "content": "..."}}'
                )
            if not messages or messages[-1]["role"] != "assistant":
                skipped += 1
                continue
            items.append(messages)
            plain.append(False)
        elif {"prompt", "completion"} <= set(row):
            prompt, completion = row["prompt"], row["completion"]
            if not (isinstance(prompt, str) and isinstance(completion, str) and completion):
                raise ConfigError(
                    f"{path}:{number}: prompt and completion must be strings, the completion "
                    "not empty"
                )
            user = {"role": "user", "content": prompt}
            items.append([user, {"role": "assistant", "content": completion}])
            plain.append(True)
        else:
            raise ConfigError(
                f'{path}:{number}: expected {{"messages": [...]}} or '
                '{"prompt": ..., "completion": ...}'
            )
    if not items:
        raise ConfigError(f"{path}: no conversation ending in an assistant turn")
    return Conversations(items, plain, skipped)


@dataclass
class Example:
    """A rendered conversation: token ids and, per token, whether the loss counts it."""

    ids: list[int]
    mask: list[bool]


def assistant_spans(tokenizer, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant's turns (each turn's
    text and the end-of-turn marker after it)."""
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ConfigError(
                "the chat template renders earlier turns differently once later turns follow, so "
                "the assistant's tokens cannot be located; fine-tune on prompt/completion data"
            )
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def render(tokenizer, messages: list[dict[str, Any]], plain: bool = False) -> Example:
    """Token ids of one conversation and its loss mask (see the module's docstring)."""
    if not tokenizer.chat_template:
        if not plain:
            raise ConfigError(
                "this model has no chat template, so conversations cannot be rendered; give "
                "prompt/completion rows (trained as plain text), or a model with a template"
            )
        prompt = tokenizer.encode(messages[0]["content"])
        completion = tokenizer.encode(messages[1]["content"], add_special_tokens=False)
        completion += tokenizer.eos_ids[:1]
        return Example(prompt + completion, [False] * len(prompt) + [True] * len(completion))
    text, spans = assistant_spans(tokenizer, messages)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    ids, mask = list(encoding.ids), []
    for start, _ in encoding.offsets:
        mask.append(any(first <= start < end for first, end in spans))
    if tokenizer.add_bos and tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id]:
        ids, mask = [tokenizer.bos_id, *ids], [False, *mask]
    return Example(ids, mask)


def targets_of(example: Example) -> list[int]:
    """Next-token targets aligned with `example.ids[:-1]`: the next token where it is the
    assistant's, IGNORE elsewhere."""
    return [
        t if keep else IGNORE for t, keep in zip(example.ids[1:], example.mask[1:], strict=True)
    ]


class ExampleBatches(LengthBuckets):
    """Training batches of `batch_size` conversations of about the same length: inputs
    (right-padded) and targets (IGNORE on padding and on what is not the assistant's)."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int):
        super().__init__([len(e.ids) for e in examples], batch_size, seed)
        self.examples, self.pad_id = examples, pad_id

    def next(self) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
        rows, new_epoch = self.next_rows()
        return example_batch([self.examples[i] for i in rows], self.pad_id), new_epoch


def example_batch(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for `examples`, right-padded; padding targets are IGNORE."""
    inputs, _ = pad_rows([e.ids[:-1] for e in examples], pad_id)
    targets, _ = pad_rows([targets_of(e) for e in examples], IGNORE)
    return inputs, targets
