"""The small public Python surface: `lm = lmforge.load(...)`, then generate, stream or chat."""

from __future__ import annotations

import ctypes
import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.checkpoints import DEFAULT_MODEL, load_checkpoint
from lmforge.checkpoints.precision import Precision
from lmforge.device import model_device, resolve_device
from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig, hf_generation_keys
from lmforge.generation.constraints import compile_constraint
from lmforge.generation.search import Completion, StreamEvent, generate_tokens, stream_tokens
from lmforge.models.heads import SequenceClassifier
from lmforge.models.quantized import int4_runs_on

if TYPE_CHECKING:
    from lmforge.evaluation.classification import Classification

# Verbs only some programs use (embed, classify, translate, compile) import their modules when
# called: a process that only generates starts without them.

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


SUMMARY_INSTRUCTION = "Summarize the following text in one or two sentences."
# greedy, no trigram said twice, bounded length: what summarisation pipelines default to
SUMMARY_OPTIONS = {"max_new_tokens": 80, "no_repeat_ngram_size": 3}


class LM:
    """A language model with its tokenizer, ready to generate."""

    def __init__(
        self,
        model,
        tokenizer,
        source: Path | str = "",
        generation_defaults: dict | None = None,
        precision: str = "",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.precision = precision  # the quantisation mode loaded and why ("int4 (auto: ...)")
        honoured = hf_generation_keys()  # generation_config.json keys we read, same names
        defaults = {k: v for k, v in (generation_defaults or {}).items() if k in honoured}
        self.defaults = GenerationConfig.from_options(**defaults)

    def config(self, **options) -> GenerationConfig:
        """The model's generation defaults overridden by `options` (validated, a constraint
        compiled against this model's tokenizer)."""
        config = GenerationConfig.from_options(self.defaults, **options)
        compile_constraint(config, self.tokenizer, self.model.config.vocab_size)
        return config

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt: text is tokenized, a list of ids is checked against the vocabulary."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.model.config.vocab_size]
            if bad:
                raise ConfigError(
                    f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.model.config.vocab_size})"
                )
            return list(prompt)
        raise ConfigError(
            f"prompt must be a string or a list of token ids, got {type(prompt).__name__}"
        )

    def _batch(self, prompts, n: int) -> tuple[list[list[int]], bool]:
        single = isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        )
        items = [prompts] if single else list(prompts)
        if not items:
            raise ConfigError("prompts is an empty list; give at least one prompt")
        encoded = [self.encode(p) for p in items]
        return [ids for ids in encoded for _ in range(n)], single

    @property
    def encoder_decoder(self) -> bool:
        """Whether the model translates a source (an encoder-decoder) rather than continues text."""
        return bool(getattr(self.model, "encoder_decoder", False))

    @property
    def classifier(self) -> bool:
        """Whether the model is a trained sequence classifier (it labels texts, it does not
        generate)."""
        return isinstance(self.model, SequenceClassifier)

    def _generates(self) -> None:
        if self.classifier:
            raise ConfigError(
                f"{self.source} is a sequence classifier (labels {self.model.labels}); it labels "
                "texts with classify() and does not generate"
            )

    def embed(
        self,
        texts: str | list[str],
        pooling: str = "mean",
        batch_size: int = 32,
        truncate: bool = False,
        normalize: bool = True,
    ) -> torch.Tensor:
        """One vector per text (a (texts, width) tensor; (width,) for one string) from the
        model's hidden states, pooled `mean` or `last`, of length 1 unless `normalize=False`.
        A text longer than the model reads is an error unless `truncate` (its start is kept)."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            raise ConfigError("texts is an empty list; give at least one text")
        if self.encoder_decoder:
            raise ConfigError(f"{self.source} is a translation model; it does not embed texts")
        trunk = self.model.trunk if self.classifier else self.model
        limit = getattr(trunk, "max_seq_len", None) or 1 << 30  # (RNNs: no limit)
        from lmforge.embeddings.texts import embed_ids, text_ids

        rows = text_ids(self.tokenizer, items, limit, trunk.config.vocab_size, truncate)
        vectors = embed_ids(trunk, rows, self.tokenizer.pad_id, pooling, batch_size, normalize)
        return vectors[0] if single else vectors

    def classify(
        self,
        texts: str | list[str],
        labels: list[str] | None = None,
        examples: list[tuple[str, str]] | None = None,
        batch_size: int = 32,
    ) -> Classification | list[Classification]:
        """Label one text (a Classification: `.label`, `.score`, `.scores`) or a list of texts.

        A trained classifier uses its head and labels. A language model classifies zero-shot by
        the likelihood of each of `labels` as the answer (few-shot with `examples`, (text, label)
        pairs shown first; through the chat template where the model has one)."""
        from lmforge.evaluation.classification import classify_by_likelihood, classify_with_head

        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            raise ConfigError("texts is an empty list; give at least one text")
        if self.classifier:
            if labels is not None and list(labels) != self.model.labels:
                raise ConfigError(
                    f"labels={labels}: this classifier was trained for {self.model.labels}"
                )
            results = classify_with_head(self.model, self.tokenizer, items, batch_size)
        elif self.encoder_decoder:
            raise ConfigError(f"{self.source} is a translation model; it cannot classify")
        elif labels is None:
            raise ConfigError(
                "labels=[...] is needed: a language model classifies zero-shot among given "
                "labels (or train a classifier: lmforge classify train)"
            )
        else:
            results = classify_by_likelihood(
                self.model, self.tokenizer, items, labels, examples or (), batch_size
            )
        return results[0] if single else results

    def summarize(
        self,
        texts: str | list[str],
        instruction: str = SUMMARY_INSTRUCTION,
        batch_size: int = 8,
        **options,
    ) -> Completion | list[Completion]:
        """Summarise one text (a Completion; `.text` is the summary) or a list of texts.

        An encoder-decoder maps each text to its summary; a model with a chat template is asked
        through it (`instruction`, then the text); any other model continues "TEXT\n\nSummary:"
        up to a line break. Defaults suit summaries (`SUMMARY_OPTIONS`: greedy, no repeated
        trigram, at most 80 new tokens); options are GenerationConfig's and override them."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            raise ConfigError("texts is an empty list; give at least one text to summarize")
        for i, text in enumerate(items):
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"texts[{i}] is empty (or not a string): nothing to summarize")
        options = {**SUMMARY_OPTIONS, **options}
        if self.encoder_decoder:
            results = self.translate(items, batch_size=batch_size, truncate=True, **options)
            return results[0] if single else results
        if not self.tokenizer.chat_template:
            options.setdefault("stop", ["\n"])
        prompts = [self.summary_prompt(text, instruction) for text in items]
        results = []
        for start in range(0, len(prompts), batch_size):
            done = self.generate(prompts[start : start + batch_size], **options)
            results += done if isinstance(done, list) else [done]
        for result in results:
            result.text = result.text.strip()
        return results[0] if single else results

    def summary_prompt(self, text: str, instruction: str = SUMMARY_INSTRUCTION) -> list[int]:
        """The prompt `summarize` continues: the chat template's where there is one."""
        if self.tokenizer.chat_template:
            return self.chat_prompt([{"role": "user", "content": f"{instruction}\n\n{text}"}])
        return self.encode(f"{text.strip()}\n\nSummary:")

    def translate(
        self, texts: str | list[str], batch_size: int = 64, truncate: bool = False, **options
    ) -> Completion | list[Completion] | list[list[Completion]]:
        """Translate one text (a Completion; `.text` is the translation) or a list of texts (one
        result per text, in order; a list of `num_return_sequences` per text when that is > 1).
        Texts are translated `batch_size` at a time, longest first; an empty text gives an empty
        translation; a text longer than the model reads is an error unless `truncate`.
        Options are GenerationConfig's (num_beams, sampling, stop, max_new_tokens, ...)."""
        self._generates()
        if not self.encoder_decoder:
            raise ConfigError(
                f"{self.source} is a decoder-only language model; translate() needs an "
                "encoder-decoder (train one with `lmforge train --arch seq2seq`); use generate()"
            )
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in items):
            raise ConfigError("texts must be a string or a list of strings")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}; expected a positive integer")
        from lmforge.generation.seq2seq import source_ids, translate_tokens

        config = self.config(**options)
        n = config.num_return_sequences
        results: list[list[Completion]] = [
            [Completion([], "", [], "eos", 0) for _ in range(n)] for _ in items
        ]
        todo = [i for i, text in enumerate(items) if text.strip()]
        sources = dict(
            zip(
                todo,
                source_ids(self.model, self.tokenizer, [items[i] for i in todo], truncate),
                strict=True,
            )
        )
        todo.sort(key=lambda i: -len(sources[i]))  # similar lengths together: little padding
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            done = translate_tokens(self.model, self.tokenizer, [sources[i] for i in chunk], config)
            for k, i in enumerate(chunk):
                results[i] = done[k * n : (k + 1) * n]
        if n == 1:
            flat = [r[0] for r in results]
            return flat[0] if single else flat
        return results[0] if single else results

    def generate(
        self, prompts: str | list[str] | list[int], **options
    ) -> Completion | list[Completion]:
        """Generate for one prompt (returns a Completion, or a list when num_return_sequences > 1)
        or a list of prompts (returns a list, num_return_sequences per prompt). For an
        encoder-decoder the prompts are sources, and this is `translate`.

        Options are GenerationConfig's, plus `draft_model` (a smaller LM with the same tokenizer)
        for speculative greedy decoding; `prompt_lookup_num_tokens=N` speculates with no model."""
        self._generates()
        if self.encoder_decoder:
            _no_draft(options.pop("draft_model", None))
            if not (isinstance(prompts, str) or all(isinstance(p, str) for p in prompts)):
                raise ConfigError("an encoder-decoder's prompts are source texts (strings)")
            result = self.translate(prompts, **options)
            if isinstance(result, list) and result and isinstance(result[0], list):
                return [c for group in result for c in group]
            return result
        draft = _draft_model(options.pop("draft_model", None))
        config = self.config(**options)
        repeat = 1 if config.num_beams > 1 else config.num_return_sequences
        encoded, single = self._batch(prompts, repeat)
        results = generate_tokens(self.model, self.tokenizer, encoded, config, draft)
        if single and config.num_return_sequences == 1:
            return results[0]
        return results

    def stream(self, prompts: str | list[str] | list[int], **options) -> Iterator[StreamEvent]:
        """Yield one event per generated token, with the text it adds (UTF-8 safe). For an
        encoder-decoder the prompts are sources, and the events are their translations'."""
        self._generates()
        draft = _draft_model(options.pop("draft_model", None))
        config = self.config(**options)
        if self.encoder_decoder:
            from lmforge.generation.seq2seq import source_ids, stream_translations

            _no_draft(draft)
            texts = [prompts] if isinstance(prompts, str) else list(prompts)
            sources = source_ids(self.model, self.tokenizer, texts)
            sources = [ids for ids in sources for _ in range(config.num_return_sequences)]
            yield from stream_translations(self.model, self.tokenizer, sources, config)
            return
        encoded, _ = self._batch(prompts, config.num_return_sequences)
        yield from stream_tokens(self.model, self.tokenizer, encoded, config, draft)

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Token ids of a conversation rendered with the chat template, ready for the reply
        (`tools` for a template with its own tool format)."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat(self, messages: list[dict[str, Any]], stream: bool = False, **options):
        """Reply to a conversation (list of {"role", "content"}) using the model's chat template."""
        self._generates()
        if self.encoder_decoder:
            raise ConfigError(
                f"{self.source} is an encoder-decoder (translation) model; it has no chat "
                "template and cannot chat: use translate()"
            )
        if not isinstance(messages, list) or not messages:
            raise ConfigError("messages must be a non-empty list of {'role': ..., 'content': ...}")
        ids = self.chat_prompt(messages)
        return self.stream(ids, **options) if stream else self.generate(ids, **options)

    def info(self) -> dict[str, Any]:
        """Architecture, size, context and tokenizer: what `lmforge info` prints."""
        return {
            "source": str(self.source),
            "architecture": type(self.model).__name__,
            **self.model.describe(),
            "tokenizer": type(self.tokenizer.backend.model).__name__,
            "eos ids": self.tokenizer.eos_ids,
            "chat template": bool(self.tokenizer.chat_template),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            **({"precision": self.precision} if self.precision else {}),
            "device": str(model_device(self.model)),
        }


def _no_draft(draft) -> None:
    if draft is not None:
        raise ConfigError(
            "draft_model speculates for decoder-only models; a translation model decodes alone"
        )


def _draft_model(draft):
    """`draft_model` may be an `LM` or a bare model speaking the protocol."""
    if draft is None or hasattr(draft, "new_cache"):
        return draft
    if isinstance(draft, LM):
        return draft.model
    raise ConfigError(
        f"draft_model must be an lmforge LM (lmforge.load(...)) or a model, got {type(draft).__name__}"
    )


@contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector: loading makes many objects and no garbage cycles,
    and a full collection during it walks every object torch's import made (tens of ms, for
    nothing) at the moment a user waits for the first token."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        _release_freed_heap()


def _release_freed_heap() -> None:
    """Hand the heap memory loading freed (the tokenizer's parsed JSON, about 14 MiB for a
    49k-token BPE) back to the system: glibc keeps it mapped, counted in the process's RSS."""
    with suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load(
    name_or_path: str | Path = DEFAULT_MODEL,
    dtype: str | torch.dtype | None = None,
    quantize: str = "auto",
    group_size: int = 32,
    compile: bool | str = "auto",
    device: str | torch.device = "cpu",
) -> LM:
    """Load a known model name, a GGUF file or a Hugging Face directory.

    quantize: "auto" (the default) keeps the precision class of the checkpoint's weights: a Q4
    GGUF runs int4, Q5-Q8 int8, F16/BF16 bf16, F32 float32, a Hugging Face directory its dtype
    (`dtype` given: that dtype, unquantised); `LM.precision` says what was chosen and why.
    "none" (weights and activations in `dtype`, float32 by default), "bf16", "int8" or "int4"
    (weight-only quantisation, activations in bfloat16; int4 groups `group_size` input columns).
    compile: run decode steps through a step compiled ahead of time by AOTInductor (GPT models),
    about twice as fast; each input layout compiles once, in about a minute, into a disk cache
    that later processes load in milliseconds (see `lmforge.generation.compiled`). "auto" (the
    default, a GPT on a CPU with a C++ compiler) uses the layouts already compiled (`lmforge
    compile`, or an earlier `compile=True`) and steps eagerly otherwise; True also compiles a
    missing layout in a background process while decoding goes on eagerly, and switches to it
    when it is ready; "now" compiles it before the step; False never compiles.
    device: "cpu", "cuda", "cuda:N", "mps" or "auto" (a CUDA GPU when PyTorch sees one); the
    weights are read on the CPU, then moved (int4 weights are repacked for CUDA's kernel)."""
    target = resolve_device(device)
    if isinstance(dtype, str):  # (None: float32, or what quantize="auto" picks)
        if dtype not in _DTYPES:
            raise ConfigError(
                f"dtype={dtype!r} is not supported; expected one of {sorted(_DTYPES)}"
            )
        dtype = _DTYPES[dtype]
    with _collector_paused():
        checkpoint = load_checkpoint(name_or_path, dtype, quantize, group_size)
    if quantize == "auto" and checkpoint.precision.mode == "int4" and not int4_runs_on(target):
        why = f"{checkpoint.precision.reason}; int4 has no kernel on {target}, so int8"
        checkpoint = load_checkpoint(name_or_path, dtype, "int8", group_size)
        checkpoint.precision = Precision("int8", why)
    if target.type != "cpu":
        checkpoint.model.to(target)
    mode = _compile_mode(compile, checkpoint.model, target)
    if mode is not None:
        from lmforge.generation.compiled import compile_decode

        source = {
            "path": str(checkpoint.source),
            "quantize": checkpoint.precision.mode,
            "group_size": group_size,
            "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        }
        compile_decode(checkpoint.model, mode, source)
    return LM(
        checkpoint.model,
        checkpoint.tokenizer,
        checkpoint.source,
        checkpoint.generation_defaults,
        str(checkpoint.precision),
    )


def _compile_mode(compile: bool | str, model, target: torch.device) -> str | None:
    """`load`'s compile argument as a `compile_decode` mode (None: eager)."""
    from lmforge.generation.compiled import cpp_compiler
    from lmforge.models.gpt import GPT

    if compile not in (True, False, "auto", "now"):
        raise ConfigError(f"compile={compile!r}; expected True, False, 'auto' or 'now'")
    if compile == "auto":
        if not isinstance(model, GPT) or target.type != "cpu":
            return None
        if cpp_compiler() is None:
            warnings.warn(
                "compile='auto' is off: no C++ compiler (g++, clang++ or $CXX) on the PATH, "
                "which AOTInductor needs; decoding runs eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return "cached"
    return {True: "background", "now": "now"}.get(compile)


def export_gguf(
    lm: LM, path: str | Path, type: str = "auto", force: bool = False, name: str | None = None
):
    """Write `lm` as a GGUF file llama.cpp runs (GPT models of the llama and gpt2 families);
    returns a `GGUFExport` saying what was written. type: "auto" (the type of the GGUF file the
    model came from, else its precision's), "f32", "f16", "bf16", "q8_0", "q4_0" or "q4_1";
    see `lmforge.checkpoints.gguf_export`. An existing file is replaced only with `force`."""
    from lmforge.checkpoints.gguf_export import export_gguf as write_gguf

    return write_gguf(lm.model, lm.tokenizer, path, type, force, source=lm.source, name=name)


def finetune(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    task: str = "sft",
    lora: bool = True,
    **settings,
) -> LM:
    """Fine-tune a pretrained `model` on `data` into the run directory `out`, and load the result.

    task: "sft" (JSONL conversations or prompt/completion rows; the loss on the assistant's
    tokens), "classification" (labelled CSV/TSV/JSONL; a classifier head on the model) or "lm"
    (plain text). lora: train rank-8 adapters (`lora_rank=` to change) rather than every weight.
    Other settings are `TrainConfig`'s, over the fine-tuning defaults (`finetune_defaults`)."""
    from lmforge.training import TrainConfig, train
    from lmforge.training.config import finetune_defaults

    values = {**finetune_defaults(lora, task), **settings}
    if lora:
        values.setdefault("lora_rank", 8)
    config = TrainConfig(
        task=task, data=str(data), init_from=str(model), tokenizer=str(model), **values
    )
    train(config, out)
    return load(out)
