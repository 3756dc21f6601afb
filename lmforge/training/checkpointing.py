"""Training state on disk: written atomically, verified when read, the previous one kept.

`last.pt` is written to a temporary file, flushed to disk, and only then renamed over the old one
(which becomes `previous.pt`). A crash, a full disk or a kill at any moment leaves at least one
complete checkpoint; a corrupted `last.pt` is refused and `previous.pt` used instead.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import CheckpointError
from lmforge.paths import fsync_directory, write_atomically

STATE_FORMAT = 1
LAST, PREVIOUS = "last.pt", "previous.pt"
REQUIRED = ("format", "step", "config", "model", "optimizer", "scheduler", "rng", "data")


def save_state(state: dict[str, Any], directory: Path) -> Path:
    """Write the training state as `directory/last.pt`, keeping the one before as `previous.pt`."""
    state = {"format": STATE_FORMAT, **state}
    directory.mkdir(parents=True, exist_ok=True)
    staged = directory / f".staged-{os.getpid()}.pt"
    try:
        write_atomically(staged, lambda f: torch.save(state, f))
    except OSError as exc:
        raise CheckpointError(
            f"could not write a checkpoint in {directory} ({exc.strerror or exc}); "
            "the previous checkpoint is intact"
        ) from exc
    last = directory / LAST
    if last.exists():
        os.replace(last, directory / PREVIOUS)
    os.replace(staged, last)
    fsync_directory(directory)
    return last


def read_state(path: Path) -> dict[str, Any]:
    """Load one checkpoint file and check it is complete; raise CheckpointError if not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} is corrupted or half-written, or not a checkpoint lmforge wrote (it holds "
            "objects a safe load refuses)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - empty file, truncated zip, ...
        what = f"{type(exc).__name__}: {exc}".split("\n")[0]
        raise CheckpointError(f"{path} is corrupted or half-written ({what})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise CheckpointError(f"{path} is not an lmforge training checkpoint (keys missing)")
    if state["format"] != STATE_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format']}, expected {STATE_FORMAT}"
        )
    return state


def load_latest_state(directory: Path) -> dict[str, Any]:
    """`last.pt`, or `previous.pt` when the last one is damaged (with a warning)."""
    last, previous = directory / LAST, directory / PREVIOUS
    if not last.exists() and not previous.exists():
        raise CheckpointError(f"nothing to resume: {directory} has no {LAST}")
    try:
        return read_state(last)
    except CheckpointError as problem:
        if not previous.exists():
            raise
        try:
            state = read_state(previous)
        except CheckpointError as second:
            raise CheckpointError(
                f"nothing to resume from in {directory}: both checkpoints are unusable: {problem}; "
                f"and {second}"
            ) from None
        print(
            f"warning: {problem}; resuming from {previous} (step {state['step']})", file=sys.stderr
        )
        return state
