"""What `quantize="auto"` picks for a checkpoint: the precision class its weights already have.

A GGUF file's block weights say how much precision its maker kept: 4-bit (and lower) types run
as int4, 5- to 8-bit types as int8, F16/BF16 as bf16, F32 as float32. A Hugging Face directory
keeps its dtype. Going below the file loses quality nobody chose to give up; going above it (a
Q4 file dequantised to float32) streams 4-8x the bytes per token for the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

# GGUF tensor types (gguf.GGMLQuantizationType names) by the mode that keeps their precision.
_GGUF_CLASSES = {
    "int4": ("Q4_0", "Q4_1", "Q4_K", "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S",
             "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0"),
    "int8": ("Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "Q8_1", "Q8_K"),
    "bf16": ("F16", "BF16"),
    "none": ("F32", "F64"),
}  # fmt: skip
# Hugging Face `dtype` / `torch_dtype` values. float16 computes in bfloat16: the same bytes, and
# the CPU kernels PyTorch has for half precision are bfloat16's.
_HF_DTYPES = {"float32": "none", "bfloat16": "bf16", "float16": "bf16"}


@dataclass(frozen=True)
class Precision:
    """A quantisation mode and why it was chosen (what `info` and `--verbose` print)."""

    mode: str
    reason: str

    def __str__(self) -> str:
        return f"{self.mode} ({self.reason})"


def asked(mode: str) -> Precision:
    return Precision(mode, "asked for")


def for_gguf(weight_type: str) -> Precision:
    """The mode that keeps a GGUF file's block-weight type (its most common one)."""
    for mode, types in _GGUF_CLASSES.items():
        if weight_type in types:
            return Precision(mode, f"auto: the GGUF's block weights are {weight_type}")
    return Precision("none", f"auto: unknown GGUF weight type {weight_type}, so float32")


def for_hf(hf_config: dict) -> Precision:
    """The mode that keeps a Hugging Face directory's dtype (float32 when it names none)."""
    dtype = str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32")
    mode = _HF_DTYPES.get(dtype, "none")
    return Precision(mode, f"auto: the checkpoint's weights are {dtype}")


def not_quantised(kind: str) -> Precision:
    """`auto` on a model quantisation does not apply to: its own dtype, said so."""
    return Precision("none", f"auto: {kind} models are not quantised, so its dtype")
