"""`GPTConfig`: the hyper-parameters of `lmforge.models.gpt.GPT`, one dataclass for every family
(GPT-2, Llama, Gemma 3), as LitGPT has one config for many models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lmforge.errors import ConfigError


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
    mlp: str = "gelu"  # "gelu" (GPT-2: tanh approximation) | "gelu_exact" (erf) | "swiglu"
    # (Llama) | "geglu" (Gemma: the tanh GELU, gated)
    position: str = "learned"  # "learned" | "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"llama3", ...}
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    norm_bias: bool = True  # LayerNorm's additive bias (nanoGPT trains without any bias)
    tie_embeddings: bool = True
    dropout: float = 0.0  # training only: after the embedding and each residual branch
    # Gemma: embeddings times sqrt(d_model); RMSNorm scaling by 1 + weight; RMSNorm over each
    # head's queries and keys; norms on the attention and MLP outputs before the residual adds
    embed_scale: bool = False
    norm_offset: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    # Sliding-window attention: which layers see only the last `sliding_window` tokens
    # ("sliding_attention") and which every token ("full_attention"); None: all full. Sliding
    # layers rotate with RoPE base `rope_local_theta` (None: rope_theta), without rope_scaling.
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    rope_local_theta: float | None = None
    query_scale: float | None = None  # scores scale (None: 1 / sqrt(head_dim))
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
    final_softcap: float | None = None  # the same on the output logits
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
            "mlp": ("gelu", "gelu_exact", "swiglu", "geglu"),
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
        if self.layer_types is not None:
            kinds = ("sliding_attention", "full_attention")
            if len(self.layer_types) != self.n_layer or set(self.layer_types) - set(kinds):
                raise ConfigError(
                    f"layer_types={self.layer_types}; expected {self.n_layer} of {kinds}"
                )
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ConfigError("layer_types has sliding layers but sliding_window is not set")

    def sliding(self, layer: int) -> bool:
        """Whether `layer` attends to the last `sliding_window` tokens only."""
        return self.layer_types is not None and self.layer_types[layer] == "sliding_attention"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        return cls(**data)


# What makes a GPTConfig Gemma 3's (besides its sizes, window and RoPE bases): checkpoints of
# every format and the gemma3 training family start from these.
GEMMA3 = dict(
    norm="rmsnorm",
    norm_offset=True,
    mlp="geglu",
    position="rope",
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
    embed_scale=True,
    qk_norm=True,
    post_norms=True,
)
