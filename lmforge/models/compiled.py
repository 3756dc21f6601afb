"""A GPT's one-token decode step compiled with `torch.compile` (inductor), for fast generation.

Eager PyTorch spends most of a small model's decode step dispatching ~1,000 tiny ops (norms,
RoPE, residual adds); inductor fuses them into a few dozen C++ loops. What makes that pay on a
CPU (measured on SmolLM2-135M int4, 2 cores: eager 14.5 ms a step, compiled ~7.5 ms):
- a C++ wrapper calls the kernels (`cpp_wrapper`), with no Python between them, and no
  per-buffer size asserts;
- every layer's KV cache is its own tensor, written in place at a slot given as a tensor, and
  attention reads a prefix whose length is a dynamic dimension: one graph serves every position;
- once an input layout has been compiled, its calls run the bytecode Dynamo generated for it
  directly, as vLLM's compile wrapper does: entering a `torch.compile`d function costs ~0.8 ms
  of frame-evaluation machinery on every call (6.7 vs 7.5 ms a step), which buys nothing once
  the inputs are known to match the graph.

The compiled artefacts go to inductor's on-disk cache, so the next process reuses them (about
10 s to re-trace instead of about 50 s to compile). The weights reach the graph as inputs,
read from the model on every step (inductor's `freezing` would make constants only of
parameters that Dynamo sees as a module's; here it generated the same code with or without it),
but the graph is specialised to the layers' shapes and types: compile after loading, quantising
or fine-tuning.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable

import torch

from lmforge.models.gpt import GPT, KVCache

# torch.compile's inductor options for the decode step (see the module docstring).
INDUCTOR_OPTIONS = {
    "cpp_wrapper": True,
    "size_asserts": False,
    "alignment_asserts": False,
}


class _SlotCache:
    """The KV cache as the compiled step sees it: this step's keys/values go to `slot` (a
    one-element tensor, so the position is data, not a constant baked into the graph) and
    attention reads the first `n_keys` slots (a dynamic dimension)."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], slot, n_keys):
        self.k, self.v, self.slot, self.n_keys = k, v, slot, n_keys

    def update(self, layer: int, start, k: torch.Tensor, v: torch.Tensor):
        self.k[layer].index_copy_(2, self.slot, k)
        self.v[layer].index_copy_(2, self.slot, v)
        return self.k[layer][:, :, : self.n_keys], self.v[layer][:, :, : self.n_keys]


class CompiledDecoder:
    """Runs `model`'s single-token steps through one compiled graph per input layout."""

    def __init__(self, model: GPT):
        _use_lmforge_cache_dir()
        self.model = model
        # Created at the first decode step: importing Dynamo and setting up torch.compile takes
        # about a second, which would otherwise delay the first token (the eager prefill's).
        self._compiled = None
        self.compiled_layouts: set[tuple] = set()  # input layouts compiled so far
        # Each layout's compiled bytecode, called without Dynamo (a layout missing here goes
        # through Dynamo).
        self._direct: dict[tuple, Callable] = {}

    def _step(self, tokens, positions, slot, valid, k, v, padded: bool) -> torch.Tensor:
        model = self.model
        cache = _SlotCache(k, v, slot, valid.shape[1])
        x, rope = model.embed_tokens(tokens, positions)
        attn_mask = None
        if padded:  # a padding row's new token sees itself (no all-masked NaN rows), as in eager
            n_keys = valid.shape[1]
            seen = valid | (torch.arange(n_keys, device=valid.device) == n_keys - 1)
            attn_mask = seen[:, None, None, :]
        for block in model.blocks:
            x = block(x, rope, cache, None, attn_mask)
        return model.lm_head(model.norm(x))

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int
    ) -> torch.Tensor | None:
        """Logits (batch, 1, vocab) for one token per row written at slot `start`, or None
        where the eager path must run (the cache's first or last slot, which would make the
        key count a constant of the graph)."""
        n_keys = start + 1
        if not 2 <= n_keys < cache.max_len:
            return None
        tokens, positions = tokens.contiguous(), positions.contiguous()
        valid = cache.valid[:, :n_keys]
        slot = torch.tensor([start], device=tokens.device)
        padded = cache.has_padding
        args = (tokens, positions, slot, valid, cache.k, cache.v, padded)
        layout = (
            tuple(tokens.shape),
            tuple(positions.shape),
            tuple(cache.k[0].shape),
            cache.k[0].stride(),
            cache.k[0].dtype,
            cache.k[0].is_inference(),
            tokens.device,
            padded,
            torch.is_inference_mode_enabled(),
            torch.is_grad_enabled(),
        )
        direct = self._direct.get(layout)
        if direct is not None:
            return direct(self, *args)
        torch._dynamo.mark_dynamic(valid, 1, min=2, max=cache.max_len - 1)
        if layout not in self.compiled_layouts:  # compile it (or fetch it from the disk cache)
            if self._compiled is None:
                self._compiled = torch.compile(self._step, fullgraph=True, options=INDUCTOR_OPTIONS)
            known = _compiled_codes()
            logits = self._compiled(*args)
            self.compiled_layouts.add(layout)
            new = [code for code in _compiled_codes() if code not in known]
            # The frame Dynamo built for this layout (a layout an earlier graph already served
            # adds none, and keeps going through Dynamo, which picks that graph).
            if len(new) == 1:
                self._direct[layout] = types.FunctionType(new[0], self._step.__globals__)
            return logits
        # Only this layout's inputs reach here, so Dynamo's guards would only repeat the check.
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return self._compiled(*args)


def _compiled_codes() -> list[types.CodeType]:
    """The bytecode Dynamo has generated for `CompiledDecoder._step`, one per compiled graph
    (none where this PyTorch lacks the private accessor: every step then goes through Dynamo)."""
    entries = getattr(torch._C._dynamo.eval_frame, "_debug_get_cache_entry_list", None)
    return (
        [] if entries is None else [entry.code for entry in entries(CompiledDecoder._step.__code__)]
    )


def _use_lmforge_cache_dir() -> None:
    """Keep inductor's compiled artefacts beside lmforge's other caches (not in /tmp, which is
    cleared on reboot), unless the user chose a directory."""
    from lmforge.checkpoints.cache import cache_root

    root = cache_root()
    if root is not None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
