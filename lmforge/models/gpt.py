"""One decoder-only transformer for the GPT-2 and Llama families.

A `GPTConfig` chooses the pieces that differ between families: learned positions or RoPE,
LayerNorm or RMSNorm, a GELU MLP or SwiGLU, biases, grouped-query attention, tied embeddings.
Attention runs through `F.scaled_dot_product_attention` over a pre-allocated `KVCache`, so the
same forward pass does prefill (many tokens) and decode (one token per step).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError

# Training attention over at most this many fp32 tokens runs as two batched matrix products and a
# softmax: forward and backward together that takes 0.5-0.8x the time of PyTorch's CPU flash
# kernel at 64 tokens, 0.65-1.0x at 128; by 256 flash attention wins. Without gradients the flash
# kernel is as fast or faster (up to 2x with grouped-query heads), so inference keeps it.
SHORT_WINDOW = 128


@dataclass
class GPTConfig:
    """Hyper-parameters of a decoder-only transformer (defaults: a small GPT-2)."""

    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # < n_head means grouped-query attention; None means n_head
    d_model: int = 768
    d_ff: int | None = None  # None means 4 * d_model
    head_dim: int | None = None  # None means d_model // n_head
    max_seq_len: int = 1024
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu" (GPT-2: tanh approximation) | "gelu_exact" (erf) | "swiglu" (Llama)
    position: str = "learned"  # "learned" | "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"llama3", ...}
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    norm_bias: bool = True  # LayerNorm's additive bias (nanoGPT trains without any bias)
    tie_embeddings: bool = True
    dropout: float = 0.0  # training only: after the embedding and each residual branch
    # Initialisation from scratch: GPT-2 scales the residual output projections by
    # 1/sqrt(2 * n_layer); transformers' Llama draws every weight from N(0, 0.02).
    scaled_residual_init: bool = True
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # family name, source info; not used by the model

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"GPTConfig.{name}={getattr(self, name)}; expected a positive integer"
                )
        if self.head_dim is None and self.d_model % self.n_head:
            raise ConfigError(
                f"d_model (n_embd)={self.d_model} is not divisible by n_head={self.n_head}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"GPTConfig.dropout={self.dropout}; expected a value in [0, 1)")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_head
        choices = {
            "norm": ("layernorm", "rmsnorm"),
            "mlp": ("gelu", "gelu_exact", "swiglu"),
            "position": ("learned", "rope"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"GPTConfig.{name}={getattr(self, name)!r}; expected one of {allowed}"
                )
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KVCache:
    """Pre-allocated keys and values for every layer, and which slots hold real (not padding) tokens.

    Slots fill left to right; `length` is how many are filled. All rows advance together, so a
    batch of prompts of different lengths is left-padded and the padding slots are marked invalid.
    """

    def __init__(
        self, config: GPTConfig, batch_size: int, max_len: int, dtype: torch.dtype, device
    ):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        # One tensor per layer rather than one stacked tensor: a compiled decode step then
        # writes each layer's slot in place (a view of a stacked input would be copied whole).
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.has_padding = False

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def reserve(self, n_tokens: int, mask: torch.Tensor | None) -> int:
        """Claim the next `n_tokens` slots (marking padding from `mask`); return the first slot."""
        start = self.length
        if start + n_tokens > self.max_len:
            raise ConfigError(
                f"KV cache full: {start} + {n_tokens} tokens exceed max_len={self.max_len}"
            )
        if mask is not None:
            self.valid[:, start : start + n_tokens] = mask
            self.has_padding = self.has_padding or not bool(mask.all())
        self.length = start + n_tokens
        return start

    def first_rows(self, n: int) -> KVCache:
        """A cache over rows [0, n) sharing this one's memory (writes land here too); a
        server runs only its busy rows through the model."""
        view = object.__new__(KVCache)
        view.k, view.v = [t[:n] for t in self.k], [t[:n] for t in self.v]
        view.valid = self.valid[:n]
        view.length, view.has_padding = self.length, self.has_padding
        return view

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (speculative decoding drops rejected tokens)."""
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot truncate a KV cache of {self.length} slots to {length}")
        self.length = length

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Write this step's keys/values for one layer; return all keys/values so far."""
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep/duplicate batch rows (beam search picks which beams continue)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]
        self.valid = self.valid[rows]


def rope_inverse_frequencies(config: GPTConfig) -> torch.Tensor:
    """RoPE frequencies, with the checkpoint's scaling ("linear" or Llama 3's "llama3")."""
    dim = config.head_dim
    # Computed on the CPU even while a model is built on the meta device (cheap, and real values).
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(is_medium, smoothed, scaled)
    raise ConfigError(
        f"rope_scaling type {rope_type!r} is not supported; supported: default, linear, llama3"
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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

    def forward(self, x, rope, cache: KVCache | None, start: int, attn_mask, trace=None):
        batch, seq, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(batch, seq, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)
        if trace is not None:
            return self.out(self._eager(q, k, v, trace).transpose(1, 2).reshape(batch, seq, q_size))
        if seq == 1 and torch.compiler.is_compiling():
            return self.out(self._one_query(q, k, v, attn_mask))
        if seq == 1 and q.dtype != torch.float32:
            # One new token sees every key, so the query heads sharing a kv head can be treated
            # as that head's rows: one small attention per kv head. PyTorch's reduced-precision
            # CPU kernel is several times slower on a single query row.
            group = self.n_head // self.n_kv_head
            y = F.scaled_dot_product_attention(
                q.reshape(batch, self.n_kv_head, group, self.head_dim), k, v, attn_mask=attn_mask
            )
            return self.out(y.reshape(batch, 1, q_size))
        short = 1 < seq <= SHORT_WINDOW and q.requires_grad and q.dtype == torch.float32
        if attn_mask is None and short:
            y = self._short_causal(q, k, v)
            return self.out(y.transpose(1, 2).reshape(batch, seq, q_size))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None and seq > 1,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        return self.out(y.transpose(1, 2).reshape(batch, seq, q_size))

    def _short_causal(self, q, k, v) -> torch.Tensor:
        """Causal softmax(q k^T / sqrt(d)) v for a short training window (no cache), as
        `baddbmm` (scores plus the causal mask in one product), softmax and `bmm`. Each kv head
        takes its group of query heads as extra rows: grouped-query attention repeats no k or v."""
        batch, _, seq, dim = q.shape
        group, heads = self.n_head // self.n_kv_head, batch * self.n_kv_head
        future = torch.full((seq, seq), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
        scores = torch.baddbmm(
            future.repeat(group, 1) if group > 1 else future,  # row g * seq + i is query i
            q.reshape(heads, group * seq, dim),
            k.reshape(heads, seq, dim).transpose(1, 2),
            alpha=1.0 / math.sqrt(dim),
        )
        y = torch.bmm(scores.softmax(dim=-1), v.reshape(heads, seq, dim))
        return y.view(batch, self.n_head, seq, dim)

    def _one_query(self, q, k, v, attn_mask) -> torch.Tensor:
        """One new token's attention as products and sums, which inductor fuses into a few
        loops (0.9 ms a step less than calling SDPA's kernel 30 times, on SmolLM2-135M):
        softmax(q k^T / sqrt(d)) v in float32, each kv head serving its group of query heads."""
        batch, group = q.shape[0], self.n_head // self.n_kv_head
        q = q.reshape(batch, self.n_kv_head, group, 1, self.head_dim).float()
        # Store the rotated query in a buffer of its own (a scatter is never inlined): left as
        # an expression, inductor recomputes its RoPE inside the loop over keys, for every key
        # (105 against 38 us a layer at 360 keys on SmolLM2; ~5% of a step at 100 keys).
        q = torch.zeros_like(q).index_copy_(0, torch.arange(batch, device=q.device), q)
        scores = (q * k[:, :, None].float()).sum(-1) / math.sqrt(self.head_dim)
        if attn_mask is not None:  # (batch, 1, 1, keys), True where a key may be seen
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        weights = scores.softmax(dim=-1)  # (batch, kv heads, group, keys)
        y = (weights[..., None] * v[:, :, None].float()).sum(-2)
        return y.to(v.dtype).reshape(batch, 1, self.n_head * self.head_dim)

    def _eager(self, q, k, v, trace: Trace) -> torch.Tensor:
        """Attention written out (softmax(q k^T / sqrt(d)) v, causal) so its weights can be
        kept; used only when a `Trace` asks for them, the fast path stays SDPA."""
        group = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        seq, keys = scores.shape[-2:]
        future = torch.ones(seq, keys, dtype=torch.bool, device=q.device).triu(keys - seq + 1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        trace.attentions.append(weights)
        return (weights @ v.float()).to(q.dtype)


@dataclass
class Trace:
    """What `GPT.forward(..., trace=Trace())` records: each layer's attention weights
    (batch, heads, queries, keys) and the residual stream after each block (batch, seq, d)."""

    attentions: list[torch.Tensor] = field(default_factory=list)
    hidden_states: list[torch.Tensor] = field(default_factory=list)


class MLP(nn.Module):
    """GPT-2's GELU MLP, or Llama's SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused
    into one projection (one matrix multiply instead of two)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=config.mlp_bias)
        else:
            self.up = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias)
            # erf GELU (nanoGPT's choice) trains several times faster on CPUs than the tanh
            # approximation, whose backward pass PyTorch does not vectorise as well.
            self.approximate = "tanh" if config.mlp == "gelu" else "none"
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back, as Llama does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.norm_bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, layer)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope, cache, start, attn_mask, trace=None):
        x = x + self.drop(self.attn(self.attn_norm(x), rope, cache, start, attn_mask, trace))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class GPT(nn.Module):
    """Decoder-only transformer speaking lmforge's model protocol."""

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
            self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)
        self.compiled_decoder = None  # set by compile_decode()

    def _apply(self, fn, recurse: bool = True):
        """Casts and moves (`.to`, `.cuda`, ...) keep the RoPE frequencies in float32: rounded
        to bfloat16 they would rotate late positions by visibly wrong angles. A tied quantised
        head shares the embedding's buffers again after a move (buffers move one by one)."""
        tied = self.head_reads_embedding()
        super()._apply(fn, recurse)
        if tied and not self.head_reads_embedding():
            from lmforge.quantize import retie

            retie(self)
        if self.config.position == "rope":
            self.inv_freq = rope_inverse_frequencies(self.config).to(self.norm.weight.device)
        return self

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
        if self.compiled_decoder is not None:
            # Each cache length is its own compiled graph: round up to a power of two so a few
            # graphs serve every request (attention reads only the filled slots either way).
            max_len = min(max(256, 1 << (max_len - 1).bit_length()), self.config.max_seq_len)
            self.compiled_decoder.refresh_weights()
        return KVCache(self.config, batch_size, max_len, self.dtype, self.norm.weight.device)

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
        batch, seq = input_ids.shape
        start = 0 if cache is None else cache.reserve(seq, mask)
        if self.pos_embed is not None:  # learned positions stop at the context length
            # (read from a tensor only when the caller gave one: a host sync, and a graph
            # break under torch.compile)
            last = start + seq - 1 if positions is None else int(positions.max())
            if last >= self.config.max_seq_len:
                raise ConfigError(
                    f"position {last} is beyond the context length {self.config.max_seq_len}"
                )
        consecutive = positions is None
        if consecutive:
            positions = torch.arange(start, start + seq, device=input_ids.device).expand(batch, seq)
        if self.compiled_decoder is not None and seq == 1 and cache is not None and trace is None:
            logits = self.compiled_decoder(input_ids, positions, cache, start)
            if logits is not None:
                return logits, cache
        x, rope = self.embed_tokens(input_ids, positions, start if consecutive else None)
        attn_mask = self._attention_mask(cache, start, seq, mask)
        for block in self.blocks:
            x = block(x, rope, cache, start, attn_mask, trace)
            if trace is not None:
                trace.hidden_states.append(x)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)), cache

    def embed_tokens(
        self, input_ids: torch.Tensor, positions: torch.Tensor, first: int | None = None
    ):
        """The first residual stream (token plus learned position embeddings, dropout) and the
        RoPE (cos, sin) for `positions`, or None for learned positions.

        first: the first position when `positions` run consecutively from it in every row. Learned
        positions are then a slice of the table, whose gradient is a sum over the batch rather than
        a gather's scatter (2% of a compiled nanoGPT-sized training step)."""
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            seq = input_ids.shape[1]
            table = self.pos_embed
            x = x + (table(positions) if first is None else table.weight[first : first + seq])
        x = self.drop(x)
        rope = self._rope(positions, x.dtype) if self.config.position == "rope" else None
        return x, rope

    def compile_decode(self) -> None:
        """Run single-token decode steps through a step compiled ahead of time by AOTInductor
        (see `lmforge.models.compiled`): about half the CPU time a step on small models, after a
        one-off compile of about a minute per input layout, kept on disk. Weights are re-read
        for every new KV cache; new weight shapes or types (e.g. quantising later) compile anew."""
        from lmforge.models.compiled import CompiledDecoder

        self.compiled_decoder = CompiledDecoder(self)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions[..., None].float() * self.inv_freq  # (batch, seq, head_dim / 2)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # broadcast over heads
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _attention_mask(cache: KVCache | None, start: int, seq: int, mask: torch.Tensor | None):
        """Boolean (batch, 1, seq, keys) mask, or None when plain causal attention is exact."""
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

    def head_reads_embedding(self) -> bool:
        """Whether the output head uses the embedding's very tensors (tied, stored once, so a
        checkpoint holds no head of its own). int4's tied head keeps its own int4-layout copy."""
        return self.config.tie_embeddings and getattr(self.lm_head, "weight", None) is getattr(
            self.embed, "weight", None
        )

    def num_parameters(self) -> int:
        """Weights of the model, counting quantised layers (buffers) once, shared ones once."""
        params = sum(p.numel() for p in self.parameters())
        quantised = {
            id(getattr(m, "weight", m)): m.num_weights
            for m in self.modules()
            if hasattr(m, "num_weights")
            # a tied head is the embedding's weights, even stored apart (int4's head)
            and not (self.config.tie_embeddings and m is self.lm_head)
        }
        return params + sum(quantised.values())
