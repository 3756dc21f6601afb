"""The generation engine: one loop for greedy and sampling, one for beam search, for every model.

Models speak lmforge's protocol (`model(ids, cache, positions, mask, last_only) -> (logits,
cache)`), so the engine never knows whether it drives a GPT or an RNN. Batched prompts are
left-padded; each row gets its own positions and padding mask, so a prompt gives the same tokens
alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from lmforge.device import model_device
from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig, eos_ids
from lmforge.generation.processors import History, apply_processors, build_processors
from lmforge.generation.sampling import choose_next, seeded_generator
from lmforge.generation.speculative import speculative_stream
from lmforge.generation.stream import StreamEvent, TextAssembler, token_event
from lmforge.tokenizers import Tokenizer


@dataclass
class Completion:
    """One generated sequence. `logprobs[i]` is the model's log-probability of `token_ids[i]`
    (before any processor); `finish_reason` is "eos", "stop" (a stop string) or "length"."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str
    prompt_tokens: int
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    score: float | None = None  # beam search: the length-penalised sequence score

    def to_dict(self) -> dict:
        """A JSON-ready dict (token ids as string keys in `top_logprobs`)."""
        data = {
            "text": self.text,
            "token_ids": self.token_ids,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
        }
        if self.top_logprobs:
            data["top_logprobs"] = [{str(k): v for k, v in t.items()} for t in self.top_logprobs]
        if self.score is not None:
            data["score"] = self.score
        return data


def start_token(tokenizer: Tokenizer, index: int = 0) -> int:
    """The token an empty prompt starts from: BOS, else the first EOS (GPT-2's <|endoftext|>)."""
    start = tokenizer.bos_id if tokenizer.bos_id is not None else (tokenizer.eos_ids or [None])[0]
    if start is None:
        raise ConfigError(
            f"prompt {index} is empty and the tokenizer has no BOS token to start from"
        )
    return start


def prepare_prompts(
    prompts: list[list[int]], tokenizer: Tokenizer, context: int, config: GenerationConfig
):
    """Empty prompts start from BOS; prompts too long for the context are an error or cut on the left."""
    prepared = []
    for i, ids in enumerate(prompts):
        ids = list(ids)
        if not ids:
            ids = [start_token(tokenizer, i)]
        room = context - 1 if config.max_new_tokens else context
        if len(ids) > room:
            if config.truncate != "left":
                raise ConfigError(
                    f"prompt {i} has {len(ids)} tokens but the model's context is {context}; "
                    "shorten it or pass truncate='left' (--truncate left) to keep its end"
                )
            ids = ids[len(ids) - room :]
        prepared.append(ids)
    return prepared


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device):
    """(tokens, mask, positions) of left-padded prompts, built on the CPU and moved at once."""
    length = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), length), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(prompts), length), dtype=torch.bool, device="cpu")
    for row, ids in enumerate(prompts):
        tokens[row, length - len(ids) :] = torch.tensor(ids, device="cpu")
        mask[row, length - len(ids) :] = True
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return tokens.to(device), mask.to(device), positions.to(device)


def _max_new(prompts: list[list[int]], context: int, config: GenerationConfig) -> int:
    return min(config.max_new_tokens, context - max(len(p) for p in prompts))


def stream_tokens(
    model,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    config: GenerationConfig,
    draft_model=None,
) -> Iterator[StreamEvent]:
    """Greedy or sampled generation for a batch of prompts, yielding each new token as it comes.

    With `draft_model` (a smaller model sharing the vocabulary) or `prompt_lookup_num_tokens`,
    greedy decoding is speculative: the same tokens, fewer forward passes."""
    if config.num_beams > 1:
        raise ConfigError("num_beams > 1 cannot stream; use generate()")
    prepared = prepare_prompts(prompts, tokenizer, model.max_seq_len, config)
    return _decode(model, tokenizer, prepared, config, draft_model)


def _decode(model, tokenizer, prepared, config, draft_model) -> Iterator[StreamEvent]:
    """The plain decode loop, or the speculative one when a drafter is asked for."""
    if draft_model is not None or config.prompt_lookup_num_tokens:
        return speculative_stream(model, tokenizer, prepared, config, draft_model)
    return _stream_prepared(model, tokenizer, prepared, config)


def prefill(model, cache, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor):
    """Run the (left-padded) prompts through the model, filling `cache`; next-token logits."""
    padded = not bool(mask.all())
    logits, cache = model(tokens, cache, positions, mask if padded else None, last_only=True)
    return logits[:, -1], cache


def decode_step(model, cache, tokens: torch.Tensor, positions: torch.Tensor):
    """Feed one new token per row (tokens, positions: (rows,)); next-token logits."""
    logits, cache = model(tokens[:, None], cache, positions[:, None], None, last_only=True)
    return logits[:, -1], cache


@torch.inference_mode()
def _stream_prepared(
    model, tokenizer: Tokenizer, prompts: list[list[int]], config: GenerationConfig
) -> Iterator[StreamEvent]:
    """The decode loop, for prompts already checked by `prepare_prompts`."""
    rows, context = len(prompts), model.max_seq_len
    # truncate="left" also lets generation run past the context: when the cache is full it is
    # rebuilt from the newest half of the text (positions renumbered), as llama.cpp shifts its
    # context; otherwise generation stops at the context ("length").
    slide = config.truncate == "left"
    max_new = config.max_new_tokens if slide else _max_new(prompts, context, config)
    eos = eos_ids(tokenizer, config)
    processors = build_processors(config, model.config.vocab_size, tokenizer)
    device = model_device(model)
    generator = seeded_generator(config.seed, device)
    if max_new <= 0:
        for row in range(rows):
            yield StreamEvent(row, None, None, "", None, "length")
        return

    # 1) the history every processor reads: prompts (left-padded), then generated tokens
    tokens, mask, positions = _left_pad(prompts, tokenizer.pad_id, device)
    prompt_len = tokens.shape[1]
    history_tokens = torch.full(
        (rows, prompt_len + max_new), tokenizer.pad_id, dtype=torch.long, device=device
    )
    history_valid = torch.zeros_like(history_tokens, dtype=torch.bool)
    history_tokens[:, :prompt_len], history_valid[:, :prompt_len] = tokens, mask
    assemblers = [TextAssembler(tokenizer, config.stop) for _ in range(rows)]
    finished = [False] * rows

    # 2) prefill: the prompts fill the cache and give the first logits
    cache_len = min(prompt_len + max_new, context)
    cache = model.new_cache(rows, cache_len)
    slide = slide and cache.rewindable  # only a cache of slots fills up and can be rebuilt
    logits, cache = prefill(model, cache, tokens, mask, positions)
    next_positions = positions[:, -1] + 1

    # 3) decode: choose a token per row, report it, feed it back. `live[i]` is the prompt behind
    #    row i of the batch: rows that finished leave it once they are a quarter of it.
    live = list(range(rows))
    for step in range(max_new):
        width = prompt_len + step
        history = History(history_tokens[:, :width], history_valid[:, :width], prompt_len)
        choice = choose_next(logits, config, processors, history, generator)
        chosen = torch.tensor(choice.tokens, device=device)
        history_tokens[:, width], history_valid[:, width] = chosen, True
        for i, token in enumerate(choice.tokens):
            row = live[i]
            if finished[row]:
                continue
            event = token_event(
                row,
                token,
                choice.logprobs[i],
                choice.top[i] if choice.top else None,
                assemblers[row],
                eos,
                last=step == max_new - 1,
            )
            finished[row] = event.finish_reason is not None
            yield event
        if all(finished):
            return
        running = [i for i, row in enumerate(live) if not finished[row]]
        if cache.prunable and 4 * (len(live) - len(running)) >= len(live):
            keep = torch.tensor(running, device=device)
            cache.reorder(keep)
            live = [live[i] for i in running]
            history_tokens, history_valid = history_tokens[keep], history_valid[keep]
            chosen, next_positions = chosen[keep], next_positions[keep]
        if slide and cache.length >= cache_len:
            # 4) the cache is full: start again from the newest half of each row's text
            keep = max(1, context // 2)
            window = history_tokens[:, width + 1 - keep : width + 1]
            valid = history_valid[:, width + 1 - keep : width + 1]
            positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
            logits, cache = prefill(
                model, model.new_cache(len(live), cache_len), window, valid, positions
            )
            next_positions = positions[:, -1] + 1
            continue
        logits, cache = decode_step(model, cache, chosen, next_positions)
        next_positions = next_positions + 1


def generate_tokens(
    model,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    config: GenerationConfig,
    draft_model=None,
) -> list[Completion]:
    """Run the decode loop to the end and collect one `Completion` per prompt row."""
    if config.num_beams > 1:
        if draft_model is not None:
            config.check_speculative("draft_model")
        return beam_search(model, tokenizer, prompts, config)
    prepared = prepare_prompts(prompts, tokenizer, model.max_seq_len, config)
    results = [Completion([], "", [], "length", len(ids)) for ids in prepared]
    for event in _decode(model, tokenizer, prepared, config, draft_model):
        result = results[event.index]
        if event.token_id is not None:
            result.token_ids.append(event.token_id)
            result.logprobs.append(event.logprob)
            if event.top_logprobs is not None:
                result.top_logprobs.append(event.top_logprobs)
        result.text += event.text
        if event.finish_reason:
            result.finish_reason = event.finish_reason
    return results


@torch.inference_mode()
def beam_search(
    model, tokenizer: Tokenizer, prompts: list[list[int]], config: GenerationConfig
) -> list[Completion]:
    """Beam search with transformers' semantics (length_penalty, early_stopping, the heuristic
    stop), vectorised over prompts x beams. Returns `num_return_sequences` completions per prompt,
    best first, flattened."""
    if config.sampling:
        raise ConfigError(
            "beam search here is deterministic; drop the sampling options or set num_beams=1"
        )
    context = model.max_seq_len
    prompts = prepare_prompts(prompts, tokenizer, context, config)
    batch, beams = len(prompts), config.num_beams
    max_new = _max_new(prompts, context, config)
    eos_ids = (
        []
        if config.ignore_eos
        else list(config.eos_token_ids if config.eos_token_ids is not None else tokenizer.eos_ids)
    )
    steps = build_processors(config, model.config.vocab_size, tokenizer)

    device = model_device(model)
    tokens, mask, positions = _left_pad(prompts, tokenizer.pad_id, device)
    prompt_len = tokens.shape[1]
    max_length = prompt_len + max_new
    expand = lambda t: t.repeat_interleave(beams, dim=0)  # noqa: E731
    tokens, mask, positions = expand(tokens), expand(mask), expand(positions)

    pad = tokenizer.pad_id
    running = torch.full((batch, beams, max_length), pad, dtype=torch.long, device=device)
    running[:, :, :prompt_len] = tokens.view(batch, beams, prompt_len)
    valid = torch.zeros((batch, beams, max_length), dtype=torch.bool, device=device)
    valid[:, :, :prompt_len] = mask.view(batch, beams, prompt_len)
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = -1e9
    running_lp = torch.zeros(batch, beams, max(max_new, 1), device=device)
    sequences, seq_lp = running.clone(), running_lp.clone()
    beam_scores = torch.full((batch, beams), -1e9, device=device)
    lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
    finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    keep = max(2, 1 + len(eos_ids)) * beams
    top_mask = torch.arange(keep, device=device) < beams
    eos_tensor = torch.tensor(eos_ids, dtype=torch.long, device=device)
    batch_offset = torch.arange(batch, device=device)[:, None] * beams
    live = list(range(batch))  # the prompt behind each row group of the batch
    ended: list = [None] * batch  # each prompt's (sequences, logprobs, lengths, scores) at the end

    cache = model.new_cache(batch * beams, max_length)
    padded = not bool(mask.all())
    logits, cache = model(tokens, cache, positions, mask if padded else None, last_only=True)
    next_positions = positions[:, -1:] + 1
    cur_len = prompt_len
    while max_new > 0:
        raw = torch.log_softmax(logits[:, -1].float(), dim=-1)
        vocab = raw.shape[-1]
        history = History(
            running[:, :, :cur_len].reshape(batch * beams, -1),
            valid[:, :, :cur_len].reshape(batch * beams, -1),
            prompt_len,
        )
        scored = apply_processors(steps, history, raw)
        scored = (scored.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, -1)
        top_scores, top_index = torch.topk(scored, keep)
        parent, token = top_index // vocab, top_index % vocab
        cand = running.gather(1, parent[:, :, None].expand(-1, -1, max_length)).clone()
        cand[:, :, cur_len] = token
        cand_lp = running_lp.gather(
            1, parent[:, :, None].expand(-1, -1, running_lp.shape[2])
        ).clone()
        cand_lp[:, :, cur_len - prompt_len] = raw.view(batch, -1).gather(1, top_index)
        hits = torch.isin(token, eos_tensor) | (cur_len + 1 >= max_length)

        # The best `beams` candidates that did not just finish keep running.
        running_cand = top_scores + hits.float() * -1e9
        next_index = torch.topk(running_cand, beams).indices
        running = cand.gather(1, next_index[:, :, None].expand(-1, -1, max_length))
        running_lp = cand_lp.gather(1, next_index[:, :, None].expand(-1, -1, cand_lp.shape[2]))
        running_scores = running_cand.gather(1, next_index)
        source_rows = (parent.gather(1, next_index) + batch_offset).view(-1)
        valid = valid.view(batch * beams, -1)[source_rows].view(batch, beams, -1)
        valid[:, :, cur_len] = True

        # Candidates among the top `beams` that just finished compete for the final list.
        just_finished = hits & top_mask[None, :]
        final = top_scores / ((cur_len + 1 - prompt_len) ** config.length_penalty)
        final = (
            final
            + (finished.all(dim=-1, keepdim=True) & (config.early_stopping is True)).float() * -1e9
        )
        final = final + (~improvable).float() * -1e9
        final = final + (~just_finished).float() * -1e9
        merged_scores = torch.cat((beam_scores, final), dim=1)
        best = torch.topk(merged_scores, beams).indices
        sequences = torch.cat((sequences, cand), dim=1).gather(
            1, best[:, :, None].expand(-1, -1, max_length)
        )
        seq_lp = torch.cat((seq_lp, cand_lp), dim=1).gather(
            1, best[:, :, None].expand(-1, -1, seq_lp.shape[2])
        )
        new_lengths = torch.full(
            (batch, keep), cur_len + 1 - prompt_len, dtype=torch.long, device=device
        )
        lengths = torch.cat((lengths, new_lengths), dim=1).gather(1, best)
        finished = torch.cat((finished, just_finished), dim=1).gather(1, best)
        beam_scores = merged_scores.gather(1, best)

        cur_len += 1
        if config.early_stopping == "never" and config.length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_scores[:, :1] / (best_length**config.length_penalty)
        worst_final = torch.where(finished, beam_scores.min(dim=1, keepdim=True).values, -1e9)
        improvable = improvable & (best_running > worst_final).any(dim=-1, keepdim=True)
        keep_going = bool(improvable.any()) and not (
            bool(finished.all()) and config.early_stopping is True
        )
        if not keep_going or bool(hits.all()):
            break
        # Prompts whose beams cannot improve leave the batch once they are a quarter of it.
        done = ~improvable[:, 0] | (finished.all(dim=1) & (config.early_stopping is True))
        if bool(done.all()):
            break
        if cache.prunable and 4 * int(done.sum()) >= batch:
            for b in done.nonzero()[:, 0].tolist():
                ended[live[b]] = (sequences[b], seq_lp[b], lengths[b], beam_scores[b])
            rest = (~done).nonzero()[:, 0]
            live, batch = [live[b] for b in rest.tolist()], len(rest)
            rows = (rest[:, None] * beams + torch.arange(beams, device=device)).view(-1)
            source_rows, next_positions = source_rows[rows], next_positions[rows]
            batch_offset = batch_offset[:batch]
            (running, valid, running_scores, running_lp, sequences, seq_lp) = (
                t[rest] for t in (running, valid, running_scores, running_lp, sequences, seq_lp)
            )
            (beam_scores, lengths, finished, improvable) = (
                t[rest] for t in (beam_scores, lengths, finished, improvable)
            )
        cache.reorder(source_rows)  # the beams that continue (of the prompts that stay), once
        logits, cache = model(
            running[:, :, cur_len - 1].reshape(-1, 1), cache, next_positions, None, last_only=True
        )
        next_positions = next_positions + 1

    for b, prompt in enumerate(live):
        ended[prompt] = (sequences[b], seq_lp[b], lengths[b], beam_scores[b])
    return _beam_completions(ended, prompts, prompt_len, eos_ids, tokenizer, config)


def _beam_completions(
    final: list, prompts: list[list[int]], prompt_len: int, eos_ids: list[int], tokenizer, config
) -> list[Completion]:
    """The `num_return_sequences` best of each prompt's (sequences, logprobs, lengths, scores)."""
    results = []
    for b, (sequences, seq_lp, lengths, beam_scores) in enumerate(final):
        for k in range(config.num_return_sequences):
            n = int(lengths[k])
            ids = sequences[k, prompt_len : prompt_len + n].tolist()
            reason = "eos" if ids and ids[-1] in eos_ids else "length"
            assembler = TextAssembler(tokenizer, config.stop)
            for token in ids:
                if token not in eos_ids:
                    assembler.add(token)
            assembler.finish()
            if assembler.stopped:
                reason = "stop"
            results.append(
                Completion(
                    ids,
                    assembler.text,
                    seq_lp[k, :n].tolist(),
                    reason,
                    len(prompts[b]),
                    score=float(beam_scores[k]),
                )
            )
    return results
