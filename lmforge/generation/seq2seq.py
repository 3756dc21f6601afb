"""Generation from an encoder-decoder: encode the sources once, then hand the engine a decoder bound
to them. Greedy, sampling with every processor, beam search and streaming are the engine's own."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lmforge.data.batches import pad_rows
from lmforge.device import model_device
from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig
from lmforge.generation.search import Completion, generate_tokens, stream_tokens
from lmforge.generation.stream import StreamEvent
from lmforge.tokenizers import Tokenizer


def source_ids(model, tokenizer: Tokenizer, texts: list[str], truncate: bool = False):
    """Each source text as the encoder reads it (its tokens, then EOS); a source longer than the
    model's maximum is an error, or cut to fit when `truncate`."""
    limit, eos = model.config.max_seq_len, model.config.eos_id
    sources = []
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text, add_special_tokens=False) + [eos]
        if len(ids) > limit:
            if not truncate:
                raise ConfigError(
                    f"source {i} has {len(ids)} tokens (EOS included) but the model reads at "
                    f"most {limit}; shorten it or pass truncate=True (--truncate-source)"
                )
            ids = ids[: limit - 1] + [eos]
        sources.append(ids)
    return sources


def _bound_decoder(model, sources: list[list[int]], config: GenerationConfig):
    if config.prompt_lookup_num_tokens:  # drafts are checked by rewinding a cache; this one can't
        raise ConfigError(
            "prompt_lookup_num_tokens speculates for decoder-only models; a translation "
            "model's cache cannot rewind rejected tokens"
        )
    source, mask = pad_rows(sources, model.config.pad_id)
    device = model_device(model)
    with torch.inference_mode():
        memory = model.encode(source.to(device), mask.to(device))
    return model.decoder(memory), [[model.config.start_id] for _ in sources]


def _decoder_config(model, config: GenerationConfig) -> GenerationConfig:
    """Padding is never generated, and the target may be as long as the model allows (its first
    input is the start token)."""
    pad = model.config.pad_id
    options: dict = {"max_new_tokens": min(config.max_new_tokens, model.config.max_seq_len - 1)}
    if pad not in config.suppress_tokens:
        options["suppress_tokens"] = [*config.suppress_tokens, pad]
    return GenerationConfig.from_options(config, **options)


def translate_tokens(
    model, tokenizer: Tokenizer, sources: list[list[int]], config: GenerationConfig
) -> list[Completion]:
    """Target tokens for each source (`source_ids`), by any decoding the engine does;
    `num_return_sequences` completions per source, best first. `prompt_tokens` counts the
    source's tokens."""
    if not sources:
        return []
    if config.num_beams == 1:  # beam search returns its n best; sampling draws n rows a source
        sources = [ids for ids in sources for _ in range(config.num_return_sequences)]
    decoder, prompts = _bound_decoder(model, sources, config)
    results = generate_tokens(decoder, tokenizer, prompts, _decoder_config(model, config))
    per_source = len(results) // len(sources)
    for i, result in enumerate(results):
        result.prompt_tokens = len(sources[i // per_source])
    return results


def stream_translations(
    model, tokenizer: Tokenizer, sources: list[list[int]], config: GenerationConfig
) -> Iterator[StreamEvent]:
    """Greedy or sampled target tokens for each source, as they come."""
    decoder, prompts = _bound_decoder(model, sources, config)
    return stream_tokens(decoder, tokenizer, prompts, _decoder_config(model, config))
