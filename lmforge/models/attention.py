"""Causal attention, softmax(q k^T / sqrt(d)) v, through the fastest kernel for each case.

`attend` is the one entry point the GPT calls; it picks among PyTorch's SDPA and a few written-out
forms that are faster on a CPU for particular shapes. `eager_attention` is the readable reference,
used when a caller wants the attention weights themselves (`lmforge explain`).

Shapes: q (batch, heads, queries, dim); k, v (batch, kv_heads, keys, dim), with `heads` a multiple
of `kv_heads` (grouped-query attention); the result is (batch, queries, heads * dim).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Training attention over at most this many fp32 tokens runs as two batched matrix products and a
# softmax, faster than PyTorch's CPU flash kernel there (forward and backward); past it, and without
# gradients at any length, the flash kernel wins, so inference keeps it.
SHORT_WINDOW = 128


def attention_mask(cache, start: int, seq: int, mask: torch.Tensor | None):
    """Boolean (batch, 1, seq, keys) mask for `seq` new tokens written from slot `start` of
    `cache` (a `KVCache` or None), with `mask` (batch, seq) False at padding; or None when plain
    causal attention is exact."""
    padded = (cache.has_padding if cache is not None else False) or (
        mask is not None and not bool(mask.all())
    )
    if not padded and start == 0:
        return None  # SDPA's is_causal
    if not padded and seq == 1:
        return None  # one new token sees every cached token
    n_keys = start + seq
    device = mask.device if mask is not None else cache.valid.device
    query_slots = torch.arange(start, n_keys, device=device)[:, None]
    key_slots = torch.arange(n_keys, device=device)[None, :]
    causal = key_slots <= query_slots
    valid = cache.valid[:, :n_keys] if cache is not None else mask
    allowed = causal[None] & valid[:, None, :]
    # A padding query would see no key at all (NaN rows); let it see itself.
    allowed = allowed | (key_slots == query_slots)[None]
    return allowed[:, None]


def attention_masks(
    cache,
    start: int,
    seq: int,
    mask: torch.Tensor | None,
    device: torch.device,
    window: int | None = None,
):
    """`attention_mask`'s mask for full-attention layers, and for sliding-window ones the same
    with each query seeing only the last `window` keys (the same mask while there are no more
    keys than that; while compiling, where the number of keys is symbolic, always built)."""
    full = attention_mask(cache, start, seq, mask)
    n_keys = start + seq
    if window is None or not (n_keys > window or torch.compiler.is_compiling()):
        return full, full
    query_slots = torch.arange(start, n_keys, device=device)[:, None]
    key_slots = torch.arange(n_keys, device=device)[None, :]
    # slots of one row are consecutive positions, so this is the distance between tokens
    recent = (key_slots <= query_slots) & (query_slots - key_slots < window)
    return full, recent[None, None] if full is None else full & recent


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask) -> torch.Tensor:
    """Causal attention; `attn_mask` (batch, 1, queries, keys), True where a key may be seen, or
    None for plain causal attention (each query sees its own and every earlier key)."""
    batch, n_head, seq, dim = q.shape
    n_kv_head = k.shape[1]
    if seq == 1 and torch.compiler.is_compiling():
        return one_query(q, k, v, attn_mask)
    if seq == 1 and q.dtype != torch.float32:
        # One new token sees every key, so the query heads sharing a kv head can be treated as
        # that head's rows: one small attention per kv head. PyTorch's reduced-precision CPU
        # kernel is several times slower on a single query row.
        group = n_head // n_kv_head
        y = F.scaled_dot_product_attention(
            q.reshape(batch, n_kv_head, group, dim), k, v, attn_mask=attn_mask
        )
        return y.reshape(batch, 1, n_head * dim)
    if (
        attn_mask is None
        and 1 < seq <= SHORT_WINDOW
        and q.requires_grad
        and q.dtype == torch.float32
    ):
        y = short_causal(q, k, v)
    else:
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None and seq > 1,
            enable_gqa=n_kv_head != n_head,
        )
    return y.transpose(1, 2).reshape(batch, seq, n_head * dim)


def short_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over a short training window (no cache) as `baddbmm` (scores plus the
    causal mask in one product), softmax and `bmm`, in (batch, heads, seq, dim). Each kv head takes
    its group of query heads as extra rows: grouped-query attention repeats no k or v."""
    batch, n_head, seq, dim = q.shape
    n_kv_head = k.shape[1]
    group, heads = n_head // n_kv_head, batch * n_kv_head
    future = torch.full((seq, seq), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
    scores = torch.baddbmm(
        future.repeat(group, 1) if group > 1 else future,  # row g * seq + i is query i
        q.reshape(heads, group * seq, dim),
        k.reshape(heads, seq, dim).transpose(1, 2),
        alpha=1.0 / math.sqrt(dim),
    )
    y = torch.bmm(scores.softmax(dim=-1), v.reshape(heads, seq, dim))
    return y.view(batch, n_head, seq, dim)


def one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask) -> torch.Tensor:
    """One new token's attention as products and sums, which inductor fuses into a few loops
    (faster than calling SDPA's kernel once per layer in a compiled decode step), in float32, each
    kv head serving its group of query heads."""
    batch, n_head, _, dim = q.shape
    n_kv_head = k.shape[1]
    q = q.reshape(batch, n_kv_head, n_head // n_kv_head, 1, dim).float()
    # Store the rotated query in a buffer of its own (a scatter is never inlined): left as an
    # expression, inductor recomputes its RoPE inside the loop over keys, for every key.
    q = torch.zeros_like(q).index_copy_(0, torch.arange(batch, device=q.device), q)
    scores = (q * k[:, :, None].float()).sum(-1) / math.sqrt(dim)
    if attn_mask is not None:  # (batch, 1, 1, keys), True where a key may be seen
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1)  # (batch, kv heads, group, keys)
    y = (weights[..., None] * v[:, :, None].float()).sum(-2)
    return y.to(v.dtype).reshape(batch, 1, n_head * dim)


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention written out, returning (output, weights (batch, heads, queries, keys)),
    for callers that look at the weights, and for scores soft-capped to (-softcap, softcap)
    (Gemma 2), which no fused kernel does; the fast path stays `attend`. `attn_mask` as
    `attend`'s."""
    batch, n_head, seq, dim = q.shape
    group = n_head // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(dim)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    keys = scores.shape[-1]
    if attn_mask is None:
        hidden = torch.ones(seq, keys, dtype=torch.bool, device=q.device).triu(keys - seq + 1)
    else:
        hidden = ~attn_mask
    weights = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)
    y = (weights @ v.float()).to(q.dtype)
    return y.transpose(1, 2).reshape(batch, seq, n_head * dim), weights
