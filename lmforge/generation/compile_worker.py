"""The process a background compile runs in (`compile=True`): `python -m
lmforge.generation.compile_worker SPEC`, SPEC being the JSON `_start_background_compile` writes.

It loads the model the way the generating process did (the same checkpoint, quantisation and
dtype, so the same structure), checks that the library path it would write is the one asked for,
and compiles that one layout into the disk cache, where the generating process finds it."""

from __future__ import annotations

import json
import sys

import torch

from lmforge.checkpoints import load_checkpoint
from lmforge.generation.compiled import CompiledDecoder


def compile_layout(spec: dict) -> None:
    """Load the model as `spec` says, check that its library path is the one asked for (the
    same structure), and compile it."""
    dtype = getattr(torch, spec["dtype"]) if spec.get("dtype") else None
    model = load_checkpoint(spec["path"], dtype, spec["quantize"], spec["group_size"]).model
    decoder = CompiledDecoder(model)
    batch, max_len, dtype_name, device, padded = spec["layout"]
    layout = (batch, max_len, getattr(torch, dtype_name), device, padded)
    if str(decoder.library_path(layout)) != spec["library"]:
        raise SystemExit(f"{spec['path']} loads as another structure than the model to compile")
    decoder.compile(layout)


if __name__ == "__main__":
    torch.set_num_threads(1)
    compile_layout(json.loads(sys.argv[1]))
