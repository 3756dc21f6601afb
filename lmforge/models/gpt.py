"""One decoder-only transformer for the GPT-2, Llama and Gemma 3 families.

A `GPTConfig` chooses the pieces that differ between families: learned positions or RoPE,
LayerNorm or RMSNorm, a GELU MLP, SwiGLU or GeGLU (`lmforge.models.layers`), biases,
grouped-query attention, tied embeddings; and Gemma's additions: scaled embeddings, query/key
norms, norms after attention and the MLP, sliding-window layers with a RoPE base of their own,
soft-capped logits. Attention (`lmforge.models.attention`) reads and writes a pre-allocated
`KVCache`, so the same forward pass does prefill (many tokens) and decode (one token per step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.attention import attend, attention_masks, eager_attention
from lmforge.models.gpt_config import GPTConfig
from lmforge.models.kv_cache import KVCache
from lmforge.models.layers import MLP, make_norm
from lmforge.models.protocol import Trace
from lmforge.models.quantized import count_weights, head_reads_embedding, quantized_mode, retie
from lmforge.models.rope import apply_rope, rope_angles, rope_inverse_frequencies


class Attention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with one fused q/k/v projection."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = (
            config.n_head,
            config.n_kv_head,
            config.head_dim,
        )
        qkv_out = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_out, bias=config.qkv_bias)
        self.out = nn.Linear(config.n_head * config.head_dim, config.d_model, bias=config.out_bias)
        if config.qk_norm:  # Gemma 3: RMSNorm over each head's features
            self.q_norm = make_norm(config, config.head_dim)
            self.k_norm = make_norm(config, config.head_dim)
        # a scores scale other than 1/sqrt(head_dim), folded into the queries
        default = config.head_dim**-0.5
        self.q_factor = (config.query_scale or default) / default
        self.softcap = config.attn_softcap

    def forward(self, x, rope, cache: KVCache | None, start: int, attn_mask, trace=None):
        batch, seq, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(batch, seq, self.n_head, self.head_dim).transpose(1, 2)  # (B, heads, T, hd)
        k = k.view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, kv, T, hd)
        v = v.view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.q_factor != 1:
            q = q * self.q_factor
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)  # every key and value so far
        if trace is None and self.softcap is None:
            return self.out(attend(q, k, v, attn_mask))  # (B, T, d)
        y, weights = eager_attention(q, k, v, attn_mask, self.softcap)
        if trace is not None:
            trace.attentions.append(weights)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); with `post_norms`
    (Gemma) each branch's output is normed too: x + norm(attn(norm(x)))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.sliding = config.sliding(layer)
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, layer)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config.d_model, config.d_ff, config.mlp, config.mlp_bias)
        if config.post_norms:
            self.attn_post_norm, self.mlp_post_norm = make_norm(config), make_norm(config)
        else:
            self.attn_post_norm = self.mlp_post_norm = nn.Identity()
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, ropes, cache, start, masks, trace=None):
        """ropes, masks: (full attention's, sliding-window attention's); a block takes its own."""
        rope, attn_mask = ropes[self.sliding], masks[self.sliding]
        attended = self.attn(self.attn_norm(x), rope, cache, start, attn_mask, trace)
        x = x + self.drop(self.attn_post_norm(attended))
        return x + self.drop(self.mlp_post_norm(self.mlp(self.mlp_norm(x))))


class GPT(nn.Module):
    """Decoder-only transformer speaking lmforge's model protocol."""

    stateful = False
    trace_views = ("attention", "lens")

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = (
            nn.Embedding(config.max_seq_len, config.d_model)
            if config.position == "learned"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        if config.position == "rope":
            self.register_buffer("inv_freq", self.rope_frequencies(), persistent=False)
            self.register_buffer("local_inv_freq", self.rope_frequencies(True), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        """Casts and moves (`.to`, `.cuda`, ...) keep the RoPE frequencies in float32: rounded
        to bfloat16 they would rotate late positions by visibly wrong angles. A tied quantised
        head shares the embedding's buffers again after a move (buffers move one by one)."""
        tied = head_reads_embedding(self)
        super()._apply(fn, recurse)
        if tied and not head_reads_embedding(self):
            retie(self)
        if self.config.position == "rope":
            self.set_rope_frequencies()
        return self

    def rope_frequencies(self, local: bool = False) -> torch.Tensor:
        """RoPE speeds of full-attention layers, or of sliding-window ones (`local`: their own
        base, unscaled, as Gemma 3 has them)."""
        c = self.config
        if local and c.rope_local_theta is not None:
            return rope_inverse_frequencies(c.head_dim, c.rope_local_theta)
        return rope_inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling)

    def set_rope_frequencies(self) -> None:
        device = self.norm.weight.device
        self.inv_freq = self.rope_frequencies().to(device)
        self.local_inv_freq = self.rope_frequencies(local=True).to(device)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """A KV cache for `batch_size` rows of up to `max_len` tokens (default: the context length)."""
        max_len = max_len or self.config.max_seq_len
        if max_len > self.config.max_seq_len:
            raise ConfigError(
                f"max_len={max_len} exceeds the model's context length {self.config.max_seq_len}"
            )
        c = self.config
        device = self.norm.weight.device
        return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len, c.head_dim, self.dtype, device)

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype (quantised models keep int weights but compute in this)."""
        return self.norm.weight.dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        trace: Trace | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Logits for `input_ids` (batch, seq), continuing from `cache` if given.

        positions: (batch, seq) position ids; default: consecutive from the cache length.
        mask: (batch, seq) bool, False marks padding tokens (left padding for batched prompts).
        last_only: return logits for the last position only (what generation needs).
        trace: a `Trace` to fill with attention weights and hidden states (eager attention;
        for a single unpadded sequence without a cache).
        """
        if trace is not None and (cache is not None or mask is not None):
            raise ConfigError("trace= works on whole unpadded sequences, without a cache")
        x = self._blocks(input_ids, cache, positions, mask, trace)
        if last_only:
            x = x[:, -1:]
        return self.read_out(x), cache

    def read_out(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the residual stream: the final norm and the output head (soft-capped
        with `final_softcap`)."""
        logits = self.lm_head(self.norm(x))
        cap = self.config.final_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final hidden states (batch, seq, d_model) of whole sequences, after the final norm:
        what the output head reads, and what a task head reads instead. Causal attention keeps
        right padding from changing the states of the real tokens before it."""
        return self.norm(self._blocks(input_ids))

    def _blocks(self, input_ids, cache=None, positions=None, mask=None, trace=None):
        """The residual stream after the last block, writing keys and values into `cache`."""
        seq = input_ids.shape[1]
        start = 0 if cache is None else cache.reserve(seq, mask)
        consecutive = positions is None
        positions = self.positions_for(input_ids, start, positions)
        x, ropes = self.embed_tokens(input_ids, positions, start if consecutive else None)
        window = self.config.sliding_window if self.config.layer_types else None
        masks = attention_masks(cache, start, seq, mask, input_ids.device, window)
        for block in self.blocks:
            x = block(x, ropes, cache, start, masks, trace)
            if trace is not None:
                trace.hidden_states.append(x)
        return x

    def positions_for(
        self, input_ids: torch.Tensor, start: int, positions: torch.Tensor | None
    ) -> torch.Tensor:
        """The position ids of tokens written from slot `start`: `positions` as given (checked
        against the context of learned positions), or consecutive from `start`."""
        batch, seq = input_ids.shape
        if self.pos_embed is not None:  # learned positions stop at the context length
            # (read from a tensor only when the caller gave one: a host sync, and a graph
            # break under torch.compile)
            last = start + seq - 1 if positions is None else int(positions.max())
            if last >= self.config.max_seq_len:
                raise ConfigError(
                    f"position {last} is beyond the context length {self.config.max_seq_len}"
                )
        if positions is not None:
            return positions
        return torch.arange(start, start + seq, device=input_ids.device).expand(batch, seq)

    def trace(self, input_ids: torch.Tensor) -> Trace:
        """One unpadded sequence through eager attention, keeping every layer's attention weights
        and residual stream; `read_out` is the model's own final norm and head (the logit lens)."""
        record = Trace(read_out=self.read_out)
        record.logits, _ = self(input_ids, trace=record)
        return record

    def describe(self) -> dict[str, Any]:
        c = self.config
        positions = c.position + (f" (theta {c.rope_theta:g})" if c.position == "rope" else "")
        return {
            "family": c.extra.get("family"),
            "format": c.extra.get("source_format"),
            "quantization (source)": c.extra.get("quantization"),
            "parameters": self.num_parameters(),
            "layers": c.n_layer,
            "d_model": c.d_model,
            "heads": f"{c.n_head} (kv {c.n_kv_head})",
            "context length": c.max_seq_len,
            "positions": positions,
            "norm / mlp": f"{c.norm} / {c.mlp}",
            **({"attention": self._attention_kinds()} if c.layer_types else {}),
            "tied embeddings": c.tie_embeddings,
            "vocab size": c.vocab_size,
            "quantization (runtime)": quantized_mode(self),
        }

    def _attention_kinds(self) -> str:
        """Which layers see a sliding window and which see every token (Gemma 3)."""
        c = self.config
        sliding = c.layer_types.count("sliding_attention")
        local = f" (RoPE theta {c.rope_local_theta:g})" if c.rope_local_theta else ""
        full = c.n_layer - sliding
        return f"sliding window {c.sliding_window}{local} in {sliding} layers, full in {full}"

    def embed_tokens(
        self, input_ids: torch.Tensor, positions: torch.Tensor, first: int | None = None
    ):
        """The first residual stream (token plus learned position embeddings, or token
        embeddings times sqrt(d_model) for Gemma; dropout) and the RoPE (cos, sin) of full and of
        sliding-window layers for `positions`, or (None, None) for learned positions.

        first: the first position when `positions` run consecutively from it in every row. Learned
        positions are then a slice of the table, whose gradient is a sum over the batch rather than
        a gather's scatter."""
        x = self.embed(input_ids)
        if self.config.embed_scale:  # the scale rounded to the weights' dtype, as Gemma does
            x = x * torch.tensor(self.config.d_model**0.5, dtype=x.dtype)
        if self.pos_embed is not None:
            seq = input_ids.shape[1]
            table = self.pos_embed
            x = x + (table(positions) if first is None else table.weight[first : first + seq])
            return self.drop(x), (None, None)
        rope = rope_angles(positions, self.inv_freq, x.dtype)
        if self.config.rope_local_theta is None:
            return self.drop(x), (rope, rope)
        return self.drop(x), (rope, rope_angles(positions, self.local_inv_freq, x.dtype))

    def init_weights(self) -> None:
        """Initialisation for training from scratch: N(0, 0.02) weights and zero biases, with
        GPT-2's residual output projections scaled by 1/sqrt(2 * n_layer) (nanoGPT does the
        same) when `scaled_residual_init`."""
        scaled = ("attn.out.weight", "mlp.down.weight") if self.config.scaled_residual_init else ()
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() >= 2:
                std = 0.02
                if name.endswith(scaled):
                    std /= math.sqrt(2 * self.config.n_layer)
                nn.init.normal_(param, mean=0.0, std=std)

    def num_parameters(self) -> int:
        return count_weights(self)
