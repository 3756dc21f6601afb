"""Encoder-decoder models for translation: a Transformer on `torch.nn.Transformer`, and a
bidirectional GRU encoder with an attention (Bahdanau) decoder.

Both speak the decoder side of lmforge's protocol once a source is encoded:

    memory = model.encode(source, source_mask)          # the encoder runs once per source
    decoder = model.decoder(memory)                     # a LanguageModel over target tokens
    decoder(ids, cache, positions) -> (logits, cache)   # what the generation engine drives

The decoder cache carries the memory (and, for the Transformer, each layer's cross-attention keys
and values, computed once), so beam search reorders it like any other cache. Training runs the
whole target at once: `model(source, source_mask, target_in, target_mask) -> logits`.

The Transformer's layout is Marian's (sinusoidal positions with sines then cosines, embeddings
scaled by sqrt(d_model), post-norm, one embedding matrix shared by encoder, decoder and output), so
a trained model exports to transformers' `MarianMTModel` with the same logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.protocol import Trace

SEQ2SEQ_KINDS = ("transformer", "gru")


@dataclass
class Seq2SeqConfig:
    vocab_size: int  # one vocabulary for source and target (a joint tokenizer)
    kind: str = "transformer"  # transformer | gru
    d_model: int = 256  # embedding width
    n_head: int = 8
    n_layer: int = 3  # encoder layers
    n_decoder_layer: int | None = None  # None: as many as the encoder
    d_ff: int = 512
    hidden_size: int = 512  # gru: each direction of the encoder, and the decoder
    dropout: float = 0.1
    activation: str = "relu"  # relu | gelu
    norm_first: bool = False  # pre-norm (with a final norm) instead of the paper's post-norm
    max_seq_len: int = 256  # the longest source or target, EOS included
    pad_id: int = 0  # its embedding row is zero and stays zero (nn.Embedding's padding_idx)
    start_id: int = 0  # the decoder's first input (lmforge's tokenizers: the pad, as Marian)
    eos_id: int = 0
    tie_embeddings: bool = True  # always: encoder, decoder and output share one matrix
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        self.tie_embeddings = True
        if self.kind not in SEQ2SEQ_KINDS:
            raise ConfigError(f"kind={self.kind!r}; expected one of {SEQ2SEQ_KINDS}")
        for name in ("vocab_size", "d_model", "n_head", "n_layer", "n_decoder_layer", "d_ff"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}; expected a positive integer")
        if self.hidden_size <= 0 or self.max_seq_len <= 0:
            raise ConfigError("hidden_size and max_seq_len must be positive integers")
        if self.kind == "transformer" and self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout}; expected a value in [0, 1)")
        if self.activation not in ("relu", "gelu"):
            raise ConfigError(f"activation={self.activation!r}; expected 'relu' or 'gelu'")
        for name in ("pad_id", "start_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"{name}={getattr(self, name)} is outside the vocabulary")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seq2SeqConfig:
        return cls(**data)


def marian_positions(length: int, dim: int, start: int = 0, device=None) -> torch.Tensor:
    """Sinusoidal encodings of positions start..start+length-1 as Marian lays them out: the sines
    of every frequency, then the cosines (the paper interleaves them; the information is the same)."""
    positions = torch.arange(start, start + length, device=device, dtype=torch.float64)
    rates = 10000.0 ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
    angles = positions[:, None] * rates  # (length, ceil(dim / 2)), in float64 as Marian's table
    encoding = torch.cat((torch.sin(angles), torch.cos(angles[:, : dim // 2])), dim=-1)
    return encoding.float()


@dataclass
class Memory:
    """An encoded batch of sources: (rows, source_len, width) states and which are real tokens."""

    states: torch.Tensor
    mask: torch.Tensor  # (rows, source_len), True for real tokens

    @property
    def rows(self) -> int:
        return self.states.shape[0]

    def repeat(self, times: int) -> Memory:
        """Each row `times` times in a row (beams or samples of one source)."""
        if times == 1:
            return self
        return Memory(
            self.states.repeat_interleave(times, dim=0), self.mask.repeat_interleave(times, dim=0)
        )


class Seq2SeqCache:
    """The decoder's state between steps: the memory it attends to, the per-layer tensors derived
    from it once (cross-attention keys and values, or the attention's projection of the encoder
    states), and the growing self-attention keys and values (Transformer) or hidden state (GRU)."""

    bounded = False  # it grows with the target; the target's length is checked up front
    rewindable = False
    prunable = True

    def __init__(self, memory: Memory, sources: torch.Tensor | None = None):
        self.memory = memory
        # which source each row translates: rows of one source share their memory
        self.sources = torch.arange(memory.rows) if sources is None else sources
        self.derived: list[torch.Tensor] = []  # from the memory, computed at the first step
        self.steps: list[torch.Tensor] = []  # grows or changes every step
        self.length = 0

    def reorder(self, rows: torch.Tensor) -> None:
        self.steps = [t[rows] for t in self.steps]
        sources = self.sources[rows.cpu()]
        if torch.equal(sources, self.sources):  # beams moved within their source: same memory
            return
        self.sources = sources
        self.memory = Memory(self.memory.states[rows], self.memory.mask[rows])
        self.derived = [t[rows] for t in self.derived]


class Decoder:
    """An encoder-decoder's decoder bound to one batch of encoded sources: a language model over
    target tokens that the generation engine drives like any other."""

    stateful = False
    trace_views: tuple[str, ...] = ()

    def __init__(self, model: Seq2SeqModel, memory: Memory):
        self.model, self.memory = model, memory
        self.config = model.config
        self.max_seq_len = model.config.max_seq_len

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Seq2SeqCache:
        """A cache for `batch_size` rows: each source's memory repeated for its beams or samples."""
        if batch_size % self.memory.rows:
            raise ConfigError(
                f"{batch_size} decoder rows do not divide among {self.memory.rows} sources"
            )
        times = batch_size // self.memory.rows
        sources = torch.arange(self.memory.rows).repeat_interleave(times)
        return Seq2SeqCache(self.memory.repeat(times), sources)

    def __call__(self, input_ids, cache=None, positions=None, mask=None, last_only=False):
        if cache is None:
            cache = self.new_cache(input_ids.shape[0])
        return self.model.decode_step(input_ids, cache), cache

    def parameters(self):
        return self.model.parameters()

    def buffers(self):
        return self.model.buffers()

    def trace(self, input_ids: torch.Tensor) -> Trace:
        raise ConfigError("tracing an encoder-decoder's decoder is not supported")

    def describe(self) -> dict[str, Any]:
        return self.model.describe()

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


class Seq2SeqModel(nn.Module):
    """What both encoder-decoders share: the protocol's encoder side and bookkeeping."""

    config: Seq2SeqConfig
    stateful = False
    trace_views: tuple[str, ...] = ()
    encoder_decoder = True

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def decoder(self, memory: Memory) -> Decoder:
        return Decoder(self, memory)

    def describe(self) -> dict[str, Any]:
        c = self.config
        described = {
            "encoder-decoder": c.kind,
            "layers": f"{c.n_layer} + {c.n_decoder_layer}",
            "width": c.d_model if c.kind == "transformer" else c.hidden_size,
            "vocabulary": c.vocab_size,
            "max_length": c.max_seq_len,
        }
        if c.kind == "transformer":
            described.update(heads=c.n_head, ffn=c.d_ff, norm="pre" if c.norm_first else "post")
        return described

    def new_cache(self, batch_size: int, max_len: int | None = None):
        raise ConfigError(
            "an encoder-decoder generates from a source: encode it first "
            "(model.decoder(model.encode(source, mask)))"
        )

    def trace(self, input_ids: torch.Tensor) -> Trace:
        raise ConfigError("tracing is for decoder-only models; this is an encoder-decoder")

    def check_length(self, tokens: torch.Tensor, what: str) -> None:
        if tokens.shape[1] > self.config.max_seq_len:
            raise ConfigError(
                f"a {what} of {tokens.shape[1]} tokens is longer than the model's maximum "
                f"({self.config.max_seq_len}); shorten it or translate with truncate"
            )


class Seq2SeqTransformer(Seq2SeqModel):
    """`torch.nn.Transformer` with embeddings, positions and a tied output layer around it."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.scale = math.sqrt(c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        layer = dict(
            d_model=c.d_model,
            nhead=c.n_head,
            dim_feedforward=c.d_ff,
            dropout=c.dropout,
            activation=c.activation,
            batch_first=True,
            norm_first=c.norm_first,
        )
        # nn.Transformer always ends each stack in a LayerNorm; the post-norm paper (and Marian)
        # have none there, so the stacks are built here and handed in.
        final_norm = (lambda: nn.LayerNorm(c.d_model)) if c.norm_first else (lambda: None)
        encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer),
            c.n_layer,
            norm=final_norm(),
            enable_nested_tensor=False,
        )
        decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer), c.n_decoder_layer, norm=final_norm()
        )
        self.transformer = nn.Transformer(
            c.d_model, c.n_head, custom_encoder=encoder, custom_decoder=decoder, batch_first=True
        )
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight
        self._positions: torch.Tensor | None = None  # the sinusoid table, made at first use
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform matrices, as PyTorch's nn.Transformer tutorial and bentrevett do; the
        shared embedding is N(0, d^-1/2) so that scaled by sqrt(d) it starts at unit variance."""
        for param in self.transformer.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        nn.init.normal_(self.embed.weight, std=self.config.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[self.config.pad_id].zero_()  # padding (and the start) adds nothing

    def _embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        weight = self.embed.weight
        table = self._positions
        if table is None or table.device != weight.device or table.dtype != weight.dtype:
            table = marian_positions(self.config.max_seq_len, self.config.d_model, 0, weight.device)
            table = self._positions = table.to(weight.dtype)  # (not a buffer: never saved)
        positions = table[start : start + ids.shape[1]]
        return self.dropout(self.embed(ids) * self.scale + positions)

    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> Memory:
        """Encoder states of right-padded `source` (rows, len); `source_mask` marks real tokens."""
        self.check_length(source, "source")
        if source_mask is None:
            source_mask = torch.ones_like(source, dtype=torch.bool)
        states = self.transformer.encoder(self._embed(source), src_key_padding_mask=~source_mask)
        return Memory(states, source_mask)

    def forward(
        self,
        source: torch.Tensor,
        source_mask: torch.Tensor,
        target_in: torch.Tensor,
        target_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (rows, target_len, vocab) for every target position at once (teacher forcing)."""
        self.check_length(target_in, "target")
        memory = self.encode(source, source_mask)
        length = target_in.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(
            length, device=target_in.device, dtype=torch.bool
        )
        states = self.transformer.decoder(
            self._embed(target_in),
            memory.states,
            tgt_mask=causal,
            tgt_is_causal=True,
            tgt_key_padding_mask=None if target_mask is None else ~target_mask,
            memory_key_padding_mask=~memory.mask,
        )
        return self.lm_head(states)

    def decode_step(self, ids: torch.Tensor, cache: Seq2SeqCache) -> torch.Tensor:
        """Logits (rows, new, vocab) for `ids` (rows, new) following the cache's tokens; the
        cache gains their self-attention keys and values. Uses nn.Transformer's own weights."""
        c = self.config
        if cache.length + ids.shape[1] > c.max_seq_len:
            raise ConfigError(f"the target outgrew the model's maximum of {c.max_seq_len} tokens")
        if not cache.derived:  # 1) first step: every layer's cross-attention keys and values
            for layer in self.transformer.decoder.layers:
                weight, bias = (
                    layer.multihead_attn.in_proj_weight,
                    layer.multihead_attn.in_proj_bias,
                )
                kv = F.linear(cache.memory.states, weight[c.d_model :], bias[c.d_model :])
                cache.derived += list(self._heads(kv.float()).chunk(2, dim=-1))
        if not cache.steps:
            empty = torch.zeros(ids.shape[0], c.n_head, 0, c.d_model // c.n_head, device=ids.device)
            cache.steps = [empty] * (2 * c.n_decoder_layer)
        x = self._embed(ids, cache.length)
        new = ids.shape[1]
        causal = None
        if new > 1:  # several tokens at once: each sees the cache and the new tokens before it
            causal = torch.ones(new, cache.length + new, dtype=torch.bool, device=ids.device)
            causal = causal.tril(cache.length)
        memory_mask = cache.memory.mask[:, None, None, :]
        for i, layer in enumerate(self.transformer.decoder.layers):
            # 2) self-attention over the target so far
            h = layer.norm1(x) if c.norm_first else x
            q, k, v = self._heads(
                F.linear(h, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)
            ).chunk(3, dim=-1)
            k = torch.cat((cache.steps[2 * i], k.float()), dim=2)
            v = torch.cat((cache.steps[2 * i + 1], v.float()), dim=2)
            cache.steps[2 * i], cache.steps[2 * i + 1] = k, v
            attended = _attend(q, k, v, causal)
            x = self._residual(x, layer.self_attn.out_proj(self._merge(attended)), layer.norm1)
            # 3) cross-attention over the source, its keys and values from the cache
            h = layer.norm2(x) if c.norm_first else x
            weight, bias = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
            q = self._heads(F.linear(h, weight[: c.d_model], bias[: c.d_model]))
            k, v = cache.derived[2 * i], cache.derived[2 * i + 1]
            attended = _attend(q, k, v, memory_mask)
            x = self._residual(x, layer.multihead_attn.out_proj(self._merge(attended)), layer.norm2)
            # 4) feed-forward
            h = layer.norm3(x) if c.norm_first else x
            x = self._residual(x, layer.linear2(layer.activation(layer.linear1(h))), layer.norm3)
        if self.transformer.decoder.norm is not None:
            x = self.transformer.decoder.norm(x)
        cache.length += new
        return self.lm_head(x)

    def _residual(self, x: torch.Tensor, update: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return x + update if self.config.norm_first else norm(x + update)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, len, k * d_model) -> (rows, heads, len, k * head_dim), k projections side by side
        per head, so `chunk(k, dim=-1)` splits them."""
        rows, length, width = x.shape
        parts = width // self.config.d_model
        x = x.view(rows, length, parts, self.config.n_head, -1)
        return x.permute(0, 3, 1, 2, 4).reshape(rows, self.config.n_head, length, -1)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        rows, heads, length, dim = x.shape
        return x.transpose(1, 2).reshape(rows, length, heads * dim)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """Attention of a decode step's few queries over float32 keys and values, in float32 whatever
    the model's precision: on a CPU, PyTorch's attention over one query is several times slower
    in bfloat16, and the cache it reads is small."""
    return F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask).to(q.dtype)


class BahdanauAttention(nn.Module):
    """Additive attention: score(s, h_j) = v . tanh(W_s s + W_h h_j), over real source tokens."""

    def __init__(self, encoder_width: int, decoder_width: int):
        super().__init__()
        self.query = nn.Linear(decoder_width, decoder_width, bias=False)
        self.keys = nn.Linear(encoder_width, decoder_width)
        self.v = nn.Linear(decoder_width, 1, bias=False)

    def forward(
        self, hidden: torch.Tensor, keys: torch.Tensor, states: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The context (rows, encoder_width) for decoder state `hidden` (rows, width); `keys` are
        the precomputed W_h h_j (rows, len, width)."""
        energy = torch.tanh(keys + self.query(hidden)[:, None, :])
        scores = self.v(energy).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights[:, None, :], states).squeeze(1)


class Seq2SeqGRU(Seq2SeqModel):
    """Bahdanau et al. (2015), as in bentrevett's tutorial 3: a bidirectional GRU reads the source;
    the decoder GRU takes each target token with an attention-weighted summary of the source, and
    predicts from its state, that summary and the token. One embedding matrix serves the source,
    the target and the output layer (a joint vocabulary)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = nn.GRU(c.d_model, c.hidden_size, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * c.hidden_size, c.hidden_size)  # encoder ends -> decoder start
        self.attention = BahdanauAttention(2 * c.hidden_size, c.hidden_size)
        self.cell = nn.GRUCell(c.d_model + 2 * c.hidden_size, c.hidden_size)
        # The prediction reads the state, the context and the input token (Bahdanau's "deep
        # output"): projected to the embedding width and scored against the shared embeddings,
        # a low-rank form of one (3 * hidden + d_model) x vocab layer at a sixth of its cost.
        self.readout = nn.Linear(3 * c.hidden_size + c.d_model, c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight

    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> Memory:
        """The encoder's states (rows, len, 2 * hidden) of right-padded sources; padding is packed
        away, so a source reads the same alone or in a batch."""
        self.check_length(source, "source")
        if source_mask is None:
            source_mask = torch.ones_like(source, dtype=torch.bool)
        lengths = source_mask.sum(dim=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.dropout(self.embed(source)), lengths, batch_first=True, enforce_sorted=False
        )
        states, _ = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(
            states, batch_first=True, total_length=source.shape[1]
        )
        return Memory(states, source_mask)

    def _start(self, cache: Seq2SeqCache) -> None:
        """The decoder's first state from the encoder's two ends, and the attention keys."""
        memory, hidden = cache.memory, self.config.hidden_size
        last = memory.mask.sum(dim=1) - 1
        forward_end = memory.states[torch.arange(memory.rows), last, :hidden]
        backward_end = memory.states[:, 0, hidden:]
        state = torch.tanh(self.bridge(torch.cat((forward_end, backward_end), dim=-1)))
        cache.derived = [self.attention.keys(memory.states)]
        cache.steps = [state]

    def decode_step(self, ids: torch.Tensor, cache: Seq2SeqCache) -> torch.Tensor:
        """Logits (rows, new, vocab) for each of `ids` (rows, new) in turn; the cache keeps the
        decoder's state."""
        if not cache.steps:
            self._start(cache)
        memory, keys, state = cache.memory, cache.derived[0], cache.steps[0]
        embedded = self.dropout(self.embed(ids))  # (rows, new, d_model)
        features = []
        for t in range(ids.shape[1]):  # the recurrence, one token at a time
            context = self.attention(state, keys, memory.states, memory.mask)
            state = self.cell(torch.cat((embedded[:, t], context), dim=-1), state)
            features.append(torch.cat((state, context), dim=-1))
        cache.steps = [state]
        cache.length += ids.shape[1]
        # the output layer, for every position in one product
        features = torch.cat((torch.stack(features, dim=1), embedded), dim=-1)
        return self.lm_head(self.readout(features))

    def forward(
        self,
        source: torch.Tensor,
        source_mask: torch.Tensor,
        target_in: torch.Tensor,
        target_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for every target position (teacher forcing: the reference feeds each step)."""
        self.check_length(target_in, "target")
        return self.decode_step(target_in, Seq2SeqCache(self.encode(source, source_mask)))
