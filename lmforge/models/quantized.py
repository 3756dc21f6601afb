"""Weight-only quantisation: fewer bytes per weight, so each decode step reads less memory.

A decode step multiplies one token's activations by every weight once, so on a CPU its speed is
set by how many bytes of weights it streams from memory. These layers keep weights in int8
(one scale per output row) or int4 (a scale and zero point per group of input columns) and
multiply with PyTorch's own weight-only kernels (`aten._weight_int8pack_mm`,
`aten._weight_int4pack_mm_for_cpu`), which unpack weights in registers. Activations run in
bfloat16: those kernels are fast only there. On a CUDA GPU int4 layers use tinygemm
(`aten._weight_int4pack_mm`, the same (scale, zero) convention in its own packed layout: moving
a layer between devices repacks it), and int8 layers dequantise and call `F.linear` (the same
numbers).

Modes: "none" (unchanged), "bf16" (cast), "int8" (every linear and the embedding int8),
"int4" (block linears int4, embedding and output head int8, as llama.cpp's Q4 files do; the
head's int8 weights multiply through the int4 kernel, see `Int8ViaInt4Linear`).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError

QUANTIZE_MODES = ("none", "bf16", "int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)
COMPUTE_DTYPE = torch.bfloat16
# Above this many rows (prefill), dequantising int8 weights and one bf16 GEMM beats the kernel.
_INT8_GEMM_ROWS = 16


def _rows_2d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).to(COMPUTE_DTYPE)


def _int4_matmul(rows: torch.Tensor, packed, group_size: int, scales_and_zeros) -> torch.Tensor:
    """(rows, padded out) = bfloat16 rows times int4 weights packed for the rows' device."""
    if rows.device.type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, packed, group_size, scales_and_zeros
        )
    return torch.ops.aten._weight_int4pack_mm(rows, packed, group_size, scales_and_zeros)


class _BFloat16Module(nn.Module):
    """A quantised layer: it computes in bfloat16, so a cast of the model to another float
    dtype (which would break its kernels deep inside PyTorch at the next forward pass) is
    refused up front, with the way out; moves between devices go through."""

    def _apply(self, fn, recurse: bool = True):
        device = next(self.buffers()).device
        cast = fn(torch.empty(0, dtype=COMPUTE_DTYPE, device=device)).dtype
        if cast != COMPUTE_DTYPE:
            raise ConfigError(
                f"a quantised model computes in bfloat16 and cannot be cast to {cast}; load it "
                "with quantize='none' (and dtype=...) for another dtype"
            )
        return super()._apply(fn, recurse)


class _WeightOnlyLinear(_BFloat16Module):
    """What the int8 and int4 layers share: sizes, an optional bfloat16 bias, the output shape."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "bias", torch.empty(out_features, dtype=COMPUTE_DTYPE, device=device) if bias else None
        )

    @property
    def num_weights(self) -> int:
        """Logical parameters (weights and bias), for counting the model's size."""
        return self.in_features * self.out_features + (
            0 if self.bias is None else self.out_features
        )

    def _output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(rows, >= out) kernel result -> x's leading shape with out features, plus bias."""
        if y.shape[1] != self.out_features:  # rows padded for the kernel
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class _Int4PackedLinear(_WeightOnlyLinear):
    """What the int4 layers share: `packed` weights in the layout of the kernel of the device
    they are on, and `scales_and_zeros` (groups, rows, 2). A move to another kind of device
    (`.to("cuda")`, `.cpu()`) repacks the weights for that device's kernel."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, group_size: int, rows: int, device
    ):
        super().__init__(in_features, out_features, bias, device)
        self.group_size = group_size
        # `rows` output rows (a multiple of 16), in the CPU kernel's layout until moved.
        self.register_buffer(
            "packed", torch.empty(rows, in_features // 2, dtype=torch.uint8, device=device)
        )
        self.register_buffer(
            "scales_and_zeros",
            torch.empty(in_features // group_size, rows, 2, dtype=COMPUTE_DTYPE, device=device),
        )

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, padded out) = x's rows times the int4 weights."""
        return _int4_matmul(_rows_2d(x), self.packed, self.group_size, self.scales_and_zeros)

    def int4_codes(self) -> torch.Tensor:
        """The (rows, in) int4 codes in [0, 15], read back through the kernel itself: the
        identity times the weights with scale 1 and zero 0 is exactly q - 8, whatever the
        kernel's internal layout."""
        eye = torch.eye(self.in_features, dtype=COMPUTE_DTYPE, device=self.packed.device)
        unit = torch.zeros_like(self.scales_and_zeros)
        unit[..., 0] = 1
        minus_eight = _int4_matmul(eye, self.packed, self.group_size, unit)
        return (minus_eight.t().to(torch.int32) + 8).contiguous()

    def _apply(self, fn, recurse: bool = True):
        source = self.packed.device
        target = fn(torch.empty(0, dtype=torch.uint8, device=source)).device
        if target.type == source.type or "meta" in (source.type, target.type):
            return super()._apply(fn, recurse)
        codes = self.int4_codes()
        super()._apply(fn, recurse)
        self.packed = pack_int4(codes.to(target))
        return self


class Int8Linear(_WeightOnlyLinear):
    """y = x @ (q * scale).T + bias, with q int8 (out, in) and one scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer(
            "weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer(
            "scales", torch.empty(out_features, dtype=COMPUTE_DTYPE, device=device)
        )

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        layer = cls(weight.shape[1], weight.shape[0], bias is not None, device="meta")
        layer.weight, layer.scales = quantize_int8_rows(weight)
        layer.bias = None if bias is None else bias.detach().to(COMPUTE_DTYPE)
        return layer

    def dequantize(self) -> torch.Tensor:
        return self.weight.to(COMPUTE_DTYPE) * self.scales[:, None]

    def float_weight(self) -> torch.Tensor:
        """The (out, in) weights this layer multiplies by, in float32."""
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows_2d(x)
        if rows.device.type == "cpu" and rows.shape[0] <= _INT8_GEMM_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        else:
            y = F.linear(rows, self.dequantize())
        return self._output(y, x)


class Int4Linear(_Int4PackedLinear):
    """Group-wise asymmetric int4: w = (q - 8) * scale + zero, one (scale, zero) per `group_size`
    input columns of each output row (the layout of PyTorch's tinygemm kernels).

    `packed` is the CPU kernel's own layout. Output rows are padded to a multiple of 16, which
    that kernel needs, and the padding is sliced off the result.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool, group_size: int, device=None
    ):
        if group_size not in INT4_GROUP_SIZES:
            raise ConfigError(f"int4 group_size={group_size}; expected one of {INT4_GROUP_SIZES}")
        rows = -(-out_features // 16) * 16
        super().__init__(in_features, out_features, bias, group_size, rows, device)

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, group_size: int
    ) -> Int4Linear:
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias is not None, group_size, device="meta")
        padded = layer.packed.shape[0]
        weight = F.pad(weight.detach().float(), (0, 0, 0, padded - out_features))
        q, scales, zeros = quantize_int4_groups(weight, group_size)
        layer.packed = pack_int4(q)
        layer.scales_and_zeros = (
            torch.stack([scales.t(), zeros.t()], dim=-1).to(COMPUTE_DTYPE).contiguous()
        )
        layer.bias = None if bias is None else bias.detach().to(COMPUTE_DTYPE)
        return layer

    def float_weight(self) -> torch.Tensor:
        """The (out, in) weights this layer multiplies by, in float32."""
        codes = self.int4_codes()[: self.out_features].float()  # (out, in)
        # (groups, out) scales and zeros, repeated over each group's columns: (out, in)
        scales, zeros = (
            t.t().repeat_interleave(self.group_size, dim=1)
            for t in self.scales_and_zeros[:, : self.out_features].float().unbind(-1)
        )
        return (codes - 8) * scales + zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._output(self._product(x), x)


class Int8ViaInt4Linear(_Int4PackedLinear):
    """Int8 weights (one scale per output row, as `Int8Linear`) multiplied by the int4 kernel.

    Each int8 q splits into two nibbles, q = 16 * high + low (high in [-8, 7], low in [0, 15]),
    so x @ (s q)^T = x @ (16 s high)^T + x @ (s low)^T. Both halves are rows of one int4 matrix
    in `Int4Linear`'s layout (exact: the 8 s that centres the low half moves to the high half),
    multiplied in one kernel call; the two halves of its result are added. Why: for a few rows,
    PyTorch's int8 weight-only kernel is compute-bound well below the int4 kernel's speed per
    weight, so with the same bytes read the output head runs faster this way (the README gives
    the measured times). The weights are exactly the int8 ones; the result is rounded to
    bfloat16 twice instead of once.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        # One scale per row: any group size that divides the row will do; the widest is smallest.
        fitting = [g for g in INT4_GROUP_SIZES if in_features % g == 0]
        if not fitting:
            raise ConfigError(
                f"int4 kernels need the input features ({in_features}) to be a multiple of 32"
            )
        half = -(-out_features // 16) * 16  # rows of each half, padded as the kernel needs
        super().__init__(in_features, out_features, bias, fitting[-1], 2 * half, device)
        self.half = half

    @classmethod
    def from_int8(
        cls, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
    ) -> Int8ViaInt4Linear:
        """The layer for int8 rows `q` (out, in) with `scales` (out,), e.g. an `Int8Embedding`'s."""
        out_features, in_features = q.shape
        layer = cls(in_features, out_features, bias is not None, device="meta")
        pad = layer.half - out_features
        q = F.pad(q.to(torch.int32), (0, 0, 0, pad))
        s = F.pad(scales.to(COMPUTE_DTYPE).float(), (0, pad))
        high, low = torch.div(q, 16, rounding_mode="floor"), q % 16
        layer.packed = pack_int4(torch.cat([high + 8, low]))
        # The kernel's weight is (nibble - 8) * scale + zero: 16 s high + 8 s, and (low - 8) s.
        # Centring the low half (mean ~0) keeps both partial products near the result's size,
        # so rounding each to bfloat16 costs about what rounding the result once does.
        scale, zero = torch.cat([16 * s, s]), torch.cat([8 * s, torch.zeros_like(s)])
        groups = in_features // layer.group_size
        layer.scales_and_zeros = (
            torch.stack([scale, zero], dim=-1)[None].expand(groups, -1, -1).to(COMPUTE_DTYPE)
        ).contiguous()
        layer.bias = None if bias is None else bias.detach().to(COMPUTE_DTYPE)
        return layer

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8ViaInt4Linear:
        return cls.from_int8(*quantize_int8_rows(weight), bias)

    def float_weight(self) -> torch.Tensor:
        """The (out, in) int8 weights times their scales, in float32."""
        codes = self.int4_codes()
        high, low = codes[: self.out_features] - 8, codes[self.half : self.half + self.out_features]
        scales = self.scales_and_zeros[0, self.half : self.half + self.out_features, 0].float()
        return (16 * high + low).float() * scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._product(x)
        # Summed in float32 and rounded once (as inductor does when it fuses this add).
        y = (y[:, : self.half].float() + y[:, self.half :].float()).to(COMPUTE_DTYPE)
        return self._output(y, x)


class Int8Embedding(_BFloat16Module):
    """Token embeddings stored int8 with one scale per token; rows are dequantised on lookup.

    Tied output heads share these very tensors through an `Int8Linear` (one copy in memory)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None):
        super().__init__()
        self.register_buffer(
            "weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device)
        )
        self.register_buffer(
            "scales", torch.empty(num_embeddings, dtype=COMPUTE_DTYPE, device=device)
        )

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Embedding:
        layer = cls(*weight.shape, device="meta")
        layer.weight, layer.scales = quantize_int8_rows(weight)
        return layer

    @property
    def num_weights(self) -> int:
        return self.weight.numel()

    def float_weight(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].to(COMPUTE_DTYPE) * self.scales[ids, None]


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (q, scale) with weight ~= q * scale[:, None]."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(weight / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scales.to(COMPUTE_DTYPE)


def quantize_int4_groups(weight: torch.Tensor, group_size: int):
    """Asymmetric int4 per group: q in [0, 15] with weight ~= (q - 8) * scale + zero.

    The grid runs from the group's minimum to its maximum, as llama.cpp's Q4_1 does, so a
    weight that was Q4_1 (block 32) comes back exactly on its own grid."""
    rows, cols = weight.shape
    if cols % group_size:
        raise ConfigError(
            f"int4 group_size={group_size} does not divide the layer's {cols} input features; "
            f"choose one of {[g for g in INT4_GROUP_SIZES if cols % g == 0] or 'none: use int8'}"
        )
    groups = weight.reshape(rows, cols // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15)
    return q.reshape(rows, cols).to(torch.int32), scales, low + 8 * scales


def int4_runs_on(device: torch.device) -> bool:
    """Whether int4 layers have a kernel on `device`: any CPU, CUDA GPUs from Ampere (8.0) on."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q (out, in) int32 in [0, 15] -> the packed layout of the kernel of q's device: the CPU
    kernel's (out, in / 2) uint8, or tinygemm's tiles on a CUDA GPU (compute capability 8.0+)."""
    if q.device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 2)
    if q.device.type != "cuda":
        raise ConfigError(
            f"int4 weights run on CPUs and CUDA GPUs, not on {q.device.type}; "
            "use quantize='int8' or 'bf16' there"
        )
    if torch.cuda.get_device_capability(q.device) < (8, 0):
        raise ConfigError(
            f"int4 on CUDA needs compute capability 8.0 or newer (Ampere); {q.device} has "
            f"{torch.cuda.get_device_capability(q.device)}: use quantize='int8' or 'bf16'"
        )
    # tinygemm takes two codes per byte, even columns in the high nibble, and tiles the input
    # dimension by 16 x inner_k_tiles.
    pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    inner_k_tiles = next(t for t in (8, 4, 2) if q.shape[1] % (16 * t) == 0)
    return torch.ops.aten._convert_weight_to_int4pack(pairs.contiguous(), inner_k_tiles)


def quantize_model(model: nn.Module, mode: str, group_size: int = 32) -> nn.Module:
    """Quantise a float model in place (`mode` in QUANTIZE_MODES); returns it for chaining."""
    check_mode(mode, group_size)
    if mode in ("int8", "int4"):  # quantise from the float weights, then cast what is left
        _swap_layers(
            model, mode, group_size, lambda kind, module: _quantized_from(kind, module, group_size)
        )
    return model if mode == "none" else model.to(COMPUTE_DTYPE)


def prepare_quantized(model: nn.Module, mode: str, group_size: int = 32) -> nn.Module:
    """Swap a model built on the meta device for empty quantised layers (before loading a
    state dict that was saved from a model quantised the same way)."""
    check_mode(mode, group_size)
    if mode in ("int8", "int4"):
        _swap_layers(
            model, mode, group_size, lambda kind, module: _empty_like(kind, module, group_size)
        )
    return model


def check_mode(mode: str, group_size: int) -> None:
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"quantize={mode!r}; expected one of {QUANTIZE_MODES}")
    if mode == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ConfigError(f"group_size={group_size}; expected one of {INT4_GROUP_SIZES}")


def _swap_layers(model: nn.Module, mode: str, group_size: int, make) -> None:
    """Replace the embedding, every block Linear and the output head, keeping weight tying."""
    tied = model.lm_head.weight is model.embed.weight
    for name, module in list(model.blocks.named_modules()):
        if isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            parent = model.blocks.get_submodule(parent_name) if parent_name else model.blocks
            setattr(parent, child, make("linear4" if mode == "int4" else "linear8", module))
    model.embed = make("embedding", model.embed)
    if mode == "int4":  # int8 weights through the int4 kernel; a tied head from the embedding's
        model.lm_head = make("head", model.embed if tied else model.lm_head)
    elif tied:
        model.lm_head = _shared_head(model.embed, model.lm_head.out_features)
    else:
        model.lm_head = make("linear8", model.lm_head)


def _quantized_from(kind: str, module: nn.Module, group_size: int) -> nn.Module:
    if kind == "embedding":
        return Int8Embedding.from_float(module.weight)
    if kind == "head":
        if isinstance(module, Int8Embedding):
            return Int8ViaInt4Linear.from_int8(module.weight, module.scales)
        return Int8ViaInt4Linear.from_float(module.weight, module.bias)
    if kind == "linear4":
        return Int4Linear.from_float(module.weight, module.bias, group_size)
    return Int8Linear.from_float(module.weight, module.bias)


def _empty_like(kind: str, module: nn.Module, group_size: int) -> nn.Module:
    if kind == "embedding":
        return Int8Embedding(module.num_embeddings, module.embedding_dim, device="meta")
    if kind == "head":
        if isinstance(module, Int8Embedding):
            vocab, dim = module.weight.shape
            return Int8ViaInt4Linear(dim, vocab, bias=False, device="meta")
        bias = module.bias is not None
        return Int8ViaInt4Linear(module.in_features, module.out_features, bias, device="meta")
    bias = module.bias is not None
    if kind == "linear4":
        return Int4Linear(module.in_features, module.out_features, bias, group_size, device="meta")
    return Int8Linear(module.in_features, module.out_features, bias, device="meta")


def _shared_head(embed: Int8Embedding, vocab_size: int) -> Int8Linear:
    head = Int8Linear(embed.weight.shape[1], vocab_size, bias=False, device="meta")
    head.weight, head.scales = embed.weight, embed.scales
    return head


def retie(model: nn.Module) -> None:
    """Point a tied output head back at the embedding's tensors (after `load_state_dict(assign=True)`);
    an int4 model's head keeps tensors of its own (`Int8ViaInt4Linear`)."""
    if isinstance(model.lm_head, Int8ViaInt4Linear):
        return
    if isinstance(model.lm_head, Int8Linear) and isinstance(model.embed, Int8Embedding):
        model.lm_head.weight, model.lm_head.scales = model.embed.weight, model.embed.scales
    else:
        model.lm_head.weight = model.embed.weight


def head_reads_embedding(model: nn.Module) -> bool:
    """Whether the output head uses the embedding's very tensors (tied, stored once, so a
    checkpoint holds no head of its own). int4's tied head keeps its own int4-layout copy."""
    head, embed = getattr(model.lm_head, "weight", None), getattr(model.embed, "weight", None)
    return model.config.tie_embeddings and head is embed


def count_weights(model: nn.Module) -> int:
    """A model's weights, counting quantised layers (buffers) once and shared tensors once."""
    params = sum(p.numel() for p in model.parameters())
    quantised = {
        id(getattr(m, "weight", m)): m.num_weights
        for m in model.modules()
        if hasattr(m, "num_weights")
        # a tied head is the embedding's weights, even stored apart (int4's head)
        and not (model.config.tie_embeddings and m is model.lm_head)
    }
    return params + sum(quantised.values())


def float_state_dict(model: nn.Module, skip: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """The weights `model` computes with, in float32, under the names of its float version's
    state dict: quantised layers dequantised, LoRA updates added (any layer with a
    `float_weight()`). What an exporter writes, whatever precision the model runs in; the
    layers named in `skip` ("blocks.0.attn.qkv") are left out."""
    out: dict[str, torch.Tensor] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        if prefix[:-1] in skip:
            return
        if hasattr(module, "float_weight"):
            out[prefix + "weight"] = module.float_weight().detach()
            bias = getattr(module, "bias", None)
            if bias is not None:
                out[prefix + "bias"] = bias.detach().float()
            return
        transient = module._non_persistent_buffers_set
        for name, tensor in [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]:
            if tensor is not None and name not in transient:
                out[prefix + name] = tensor.detach().float()
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.")

    visit(model, "")
    return out


def quantized_mode(model: nn.Module) -> str:
    """Which QUANTIZE_MODES entry a model is in (read from its layers)."""
    kinds = {type(m) for m in model.modules()}
    if Int4Linear in kinds:
        return "int4"
    if Int8Linear in kinds:
        return "int8"
    return "bf16" if getattr(model, "dtype", None) == torch.bfloat16 else "none"
