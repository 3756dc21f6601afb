"""Recurrent language models (RNN, LSTM, GRU) on lmforge's model protocol.

The classic recipe of PyTorch's word_language_model: embedding -> dropout -> `torch.nn.RNN`/
`LSTM`/`GRU` -> dropout -> linear decoder, optionally tied to the embedding. The hidden state is
the generation cache: it summarises everything seen so far, so a step costs the same at token 10
and token 10,000, and there is no context limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.protocol import Trace

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


@dataclass
class RNNConfig:
    vocab_size: int
    cell: str = "lstm"
    d_model: int = 200  # the embedding size (bundles before 0.2 call it n_embd)
    hidden_size: int = 200
    n_layer: int = 2
    dropout: float = 0.2
    tie_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"cell={self.cell!r}; expected one of {CELLS}")
        for name in ("vocab_size", "d_model", "hidden_size", "n_layer"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}; expected a positive integer")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout}; expected a value in [0, 1)")
        if self.tie_embeddings and self.d_model != self.hidden_size:
            raise ConfigError(
                f"tied embeddings need d_model (n_embd) == hidden_size (got {self.d_model} and "
                f"{self.hidden_size}); set them equal or turn tying off"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RNNConfig:
        """A config from `to_dict`'s output, including bundles written under the old names."""
        renamed = {"n_embd": "d_model"}
        return cls(**{renamed.get(k, k): v for k, v in data.items()})


class RNNState:
    """The generation cache of a recurrent model: its hidden state, one row per sequence
    ((layers, batch, hidden); an LSTM's is a (h, c) pair)."""

    bounded = False  # no slots to fill: a state of fixed size summarises any length of text
    rewindable = False  # a state cannot forget its newest tokens
    prunable = True

    def __init__(self, hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor]):
        self.hidden = hidden

    @property
    def parts(self) -> tuple[torch.Tensor, ...]:
        return self.hidden if isinstance(self.hidden, tuple) else (self.hidden,)

    def _map(self, fn) -> None:
        h = self.hidden
        self.hidden = tuple(fn(t) for t in h) if isinstance(h, tuple) else fn(h)

    def place_row(self, index: int, alone: RNNState) -> None:
        """Copy a one-row state into row `index` (a server admitting a request)."""
        for mine, theirs in zip(self.parts, alone.parts, strict=True):
            mine[:, index] = theirs[:, 0]

    def first_rows(self, n: int) -> RNNState:
        """The state of rows [0, n); the model replaces a state's tensors as it runs, so hand the
        view back with `catch_up` afterwards."""
        h = self.hidden
        return RNNState(tuple(t[:, :n] for t in h) if isinstance(h, tuple) else h[:, :n])

    def catch_up(self, view: RNNState) -> None:
        """Take the new state of a `first_rows` view as these rows' own."""
        for mine, theirs in zip(self.parts, view.parts, strict=True):
            mine[:, : theirs.shape[1]] = theirs

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep/duplicate batch rows (beam search picks which beams continue)."""
        self._map(lambda t: t[:, rows])

    def detach(self) -> RNNState:
        """Cut the graph at a chunk boundary (truncated back-propagation through time)."""
        self._map(lambda t: t.detach())
        return self


class RNNLM(nn.Module):
    """Embedding, a stack of recurrent layers, and a (possibly tied) output projection."""

    # Recurrence has no context window; this bounds prompt + generated tokens in the engine only.
    max_seq_len = 1 << 30
    stateful = True  # the hidden state carries a text from one chunk to the next
    trace_views = ("states",)

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        self.drop = nn.Dropout(config.dropout)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        between = config.dropout if config.n_layer > 1 else 0.0
        sizes = (config.d_model, config.hidden_size, config.n_layer)
        if config.cell in ("lstm", "gru"):
            layer = nn.LSTM if config.cell == "lstm" else nn.GRU
            self.rnn = layer(*sizes, dropout=between, batch_first=True)
        else:
            nonlinearity = config.cell.removeprefix("rnn_")
            self.rnn = nn.RNN(*sizes, dropout=between, nonlinearity=nonlinearity, batch_first=True)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.init_weights()

    def init_weights(self) -> None:
        """word_language_model's initialisation: uniform(-0.1, 0.1) embedding and decoder."""
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.zeros_(self.lm_head.bias)
        if not self.config.tie_embeddings:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def new_cache(self, batch_size: int, max_len: int | None = None) -> RNNState:
        """A zero hidden state for `batch_size` rows (`max_len` is ignored: no window)."""
        c = self.config
        zeros = lambda: torch.zeros(  # noqa: E731
            c.n_layer, batch_size, c.hidden_size, dtype=self.dtype, device=self.embed.weight.device
        )
        return RNNState((zeros(), zeros()) if c.cell == "lstm" else zeros())

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: RNNState | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, RNNState]:
        """Logits for `input_ids` (batch, seq), continuing from the hidden state in `cache`.

        mask: (batch, seq) bool, False marks left padding: those steps leave the state untouched,
        so a prompt gives the same result alone or in a batch. `positions` is not needed."""
        cache = cache if cache is not None else self.new_cache(input_ids.shape[0])
        x = self.drop(self.embed(input_ids))
        if mask is None or bool(mask.all()):
            out, cache.hidden = self.rnn(x, cache.hidden)
        else:
            out = self._masked_steps(x, cache, mask)
        if last_only:
            out = out[:, -1:]
        return self.lm_head(self.drop(out)), cache

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The last layer's hidden states (batch, seq, hidden_size) of whole sequences from a zero
        state: what the output head reads, and what a task head reads instead. A recurrence runs
        left to right, so right padding never reaches the real tokens' states."""
        out, _ = self.rnn(
            self.drop(self.embed(input_ids)), self.new_cache(input_ids.shape[0]).hidden
        )
        return out

    def _masked_steps(self, x: torch.Tensor, cache: RNNState, mask: torch.Tensor) -> torch.Tensor:
        outputs = []
        for t in range(x.shape[1]):
            out, new = self.rnn(x[:, t : t + 1], cache.hidden)
            keep = mask[:, t]
            if isinstance(new, tuple):
                cache.hidden = tuple(
                    torch.where(keep[None, :, None], n, o)
                    for n, o in zip(new, cache.hidden, strict=True)
                )
            else:
                cache.hidden = torch.where(keep[None, :, None], new, cache.hidden)
            outputs.append(out)
        return torch.cat(outputs, dim=1)

    @torch.inference_mode()
    def trace(self, input_ids: torch.Tensor) -> Trace:
        """The logits of one sequence (1, seq), and its `states`: the sequence run again step by
        step with the layers' own weights, keeping per layer its hidden states and gate
        activations (seq, hidden): LSTM input/forget/cell/output gates and cell state, GRU
        reset/update/candidate, a plain RNN its hidden state."""
        logits, _ = self(input_ids)
        return Trace(logits=logits, states=self._states(input_ids))

    def _states(self, input_ids: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        c = self.config
        x = self.embed(input_ids[0])
        record: dict[str, list[torch.Tensor]] = {}
        for layer in range(c.n_layer):
            w_ih, w_hh = (
                getattr(self.rnn, f"weight_ih_l{layer}"),
                getattr(self.rnn, f"weight_hh_l{layer}"),
            )
            b_ih, b_hh = (
                getattr(self.rnn, f"bias_ih_l{layer}"),
                getattr(self.rnn, f"bias_hh_l{layer}"),
            )
            h = torch.zeros(c.hidden_size)
            cell = torch.zeros(c.hidden_size)
            steps: dict[str, list[torch.Tensor]] = {}
            for t in range(x.shape[0]):
                gi, gh = w_ih @ x[t] + b_ih, w_hh @ h + b_hh
                if c.cell == "lstm":
                    i, f, g, o = (gi + gh).chunk(4)
                    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                    cell = f * cell + i * g
                    h = o * cell.tanh()
                    gates = {
                        "input gate": i,
                        "forget gate": f,
                        "cell candidate": g,
                        "output gate": o,
                        "cell state": cell,
                    }
                elif c.cell == "gru":
                    (ir, iz, in_), (hr, hz, hn) = gi.chunk(3), gh.chunk(3)
                    r, z = (ir + hr).sigmoid(), (iz + hz).sigmoid()
                    n = (in_ + r * hn).tanh()
                    h = (1 - z) * n + z * h
                    gates = {"reset gate": r, "update gate": z, "candidate": n}
                else:
                    pre = gi + gh
                    h = pre.tanh() if c.cell == "rnn_tanh" else pre.relu()
                    gates = {}
                for name, value in {"hidden state": h, **gates}.items():
                    steps.setdefault(name, []).append(value)
            for name, values in steps.items():
                record.setdefault(name, []).append(torch.stack(values))
            x = record["hidden state"][-1]
        return record

    def describe(self) -> dict[str, Any]:
        details = {k: v for k, v in self.config.to_dict().items() if k != "extra"}
        return {"parameters": self.num_parameters(), **details}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
