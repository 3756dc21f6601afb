"""A GPT's one-token decode step compiled ahead of time with AOTInductor, for fast generation.

Eager PyTorch spends most of a small model's decode step dispatching ~1,000 tiny ops (norms,
RoPE, residual adds); inductor fuses them into a few dozen C++ loops. The step is captured with
`torch.export` and compiled by AOTInductor into a shared library that runs the whole step in
C++: no Python, no Dynamo guards or frame evaluation between the kernels (the README gives
the measured step times). What shapes the graph:
- every layer's KV cache is its own tensor, written in place at a slot given as a tensor, and
  attention reads a prefix whose length is a dynamic dimension: one graph serves every position;
- the weights are inputs of the graph, not constants baked into the library: it shares the
  model's memory (no second copy of the weights) and stays valid for any weights of the same
  shapes, so its cache key is the model's structure, never its values.

Each input layout (batch size, cache length, dtype, device, padding) compiles once, in about a
minute, into `<lmforge cache>/compiled/`; a later process loads it in milliseconds, without
importing the compiler at all (a large import, in time and memory). The weights are
re-read for every new KV cache, so weights replaced after compiling are the ones used; new
weight shapes or types make a new cache key, compiled anew.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import ConfigError, LMForgeError
from lmforge.models.gpt import GPT
from lmforge.models.kv_cache import KVCache
from lmforge.paths import cache_root

# AOTInductor options: the step's inputs always have the shapes and strides it was compiled for
# (the layout key guarantees it), so per-call checks of them buy nothing. Passed as a copy:
# inductor adds its own keys to the dict it is given, which would change later cache keys.
INDUCTOR_OPTIONS = {"size_asserts": False, "alignment_asserts": False}
# The code a compiled step is traced from: a change to any of it makes new cache keys.
_TRACED_SOURCES = (
    "../models/gpt.py",
    "../models/attention.py",
    "../models/rope.py",
    "../models/quantized.py",
    "compiled.py",
)


COMPILE_MODES = ("now", "background", "cached")


def compile_decode(model: GPT, mode: str = "now", source: dict | None = None) -> None:
    """Run `model`'s single-token decode steps through a step compiled ahead of time (GPT models):
    about half the CPU time a step on small models, after a one-off compile of about a minute per
    input layout, kept on disk. Weights are re-read for every new KV cache; new weight shapes or
    types (e.g. quantising later) compile anew.

    mode: what happens at a layout with no library on disk yet. "now" compiles it in this process
    before the step; "background" steps eagerly while another process compiles it (`source`, the
    arguments of `load_checkpoint` that rebuild this model, tells that process what to load; a
    model without one compiles "now"), then switches to it; "cached" only uses libraries already
    on disk (`lmforge compile` makes them) and otherwise steps eagerly.

    The model itself knows nothing of it: this wraps the instance's `forward` (one new token per
    row with a KV cache goes to the compiled step, everything else to the eager forward) and its
    `new_cache` (cache lengths the compiled graphs are made for), and leaves the decoder at
    `model.compiled_decoder`."""
    if not isinstance(model, GPT):
        raise ConfigError(
            f"compile=True compiles a GPT's decode step; {type(model).__name__} models run "
            "eagerly (drop compile=True / --compile)"
        )
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile mode {mode!r}; expected one of {COMPILE_MODES}")
    decoder = CompiledDecoder(model, mode, source)
    eager_forward, eager_new_cache = model.forward, model.new_cache

    def forward(input_ids, cache=None, positions=None, mask=None, last_only=False, trace=None):
        one_cached_token = trace is None and cache is not None and input_ids.shape[1] == 1
        if one_cached_token and decoder.accepts(cache) and decoder.ready(cache, mask):
            start = cache.reserve(1, mask)
            positions = model.positions_for(input_ids, start, positions)
            return decoder(input_ids, positions, cache, start), cache
        return eager_forward(input_ids, cache, positions, mask, last_only, trace)

    def new_cache(batch_size: int, max_len: int | None = None) -> KVCache:
        max_len = max_len or model.config.max_seq_len
        rounded = decoder.cache_length(max_len) if max_len <= model.config.max_seq_len else max_len
        if not decoder.may_step(batch_size, rounded):  # eager all the way: a cache as eager's
            return eager_new_cache(batch_size, max_len)
        cache = eager_new_cache(batch_size, rounded)  # (longer than the context: its clear error)
        cache.prunable = False  # each batch size is a graph of its own: rows stay till the end
        return cache

    model.forward, model.new_cache, model.compiled_decoder = forward, new_cache, decoder


class _SlotCache:
    """The KV cache as the compiled step sees it: this step's keys/values go to `slot` (a
    one-element tensor, so the position is data, not a constant baked into the graph) and
    attention reads the first `n_keys` slots (a dynamic dimension)."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], slot, n_keys):
        self.k, self.v, self.slot, self.n_keys = k, v, slot, n_keys

    def update(self, layer: int, start, k: torch.Tensor, v: torch.Tensor):
        self.k[layer].index_copy_(2, self.slot, k)
        self.v[layer].index_copy_(2, self.slot, v)
        return self.k[layer][:, :, : self.n_keys], self.v[layer][:, :, : self.n_keys]


class _DecodeStep(nn.Module):
    """The traced function: logits for one token per row, its keys/values written in place."""

    def __init__(self, model: GPT, padded: bool):
        super().__init__()
        self.model, self.padded = model, padded

    def forward(self, tokens, positions, slot, valid, k, v) -> torch.Tensor:
        model = self.model
        cache = _SlotCache(k, v, slot, valid.shape[1])
        x, ropes = model.embed_tokens(tokens, positions)
        n_keys = valid.shape[1]
        slots = torch.arange(n_keys, device=valid.device)
        attn_mask = None
        if self.padded:  # a padding row's new token sees itself (no all-masked NaN rows), as eager
            attn_mask = (valid | (slots == n_keys - 1))[:, None, None, :]
        window_mask = attn_mask
        if model.config.layer_types:  # sliding layers: only the last `sliding_window` keys
            recent = (slots > n_keys - 1 - model.config.sliding_window)[None, None, None, :]
            window_mask = recent if attn_mask is None else attn_mask & recent
        for block in model.blocks:
            x = block(x, ropes, cache, None, (attn_mask, window_mask))
        return model.read_out(x)


class _WeightsAsInputs(nn.Module):
    """What is exported: `_DecodeStep` with the model's weights passed in as a first argument
    (`functional_call`), so they become graph inputs instead of constants."""

    def __init__(self, step: _DecodeStep, names: list[str]):
        super().__init__()
        object.__setattr__(self, "step", step)  # not a submodule: export must not lift its weights
        self.names = names

    def forward(self, weights, tokens, positions, slot, valid, k, v) -> torch.Tensor:
        state = dict(zip(self.names, weights, strict=True))
        return torch.func.functional_call(self.step, state, (tokens, positions, slot, valid, k, v))


class CompiledDecoder:
    """Runs `model`'s single-token steps through one AOTInductor library per input layout."""

    def __init__(self, model: GPT, mode: str = "now", source: dict | None = None):
        self.model, self.source = model, source
        self.mode = "now" if mode == "background" and source is None else mode
        self._runners: dict[tuple, object] = {}  # input layout -> loaded library
        self._compiling: dict[tuple, subprocess.Popen] = {}  # background compiles under way
        self._eager: set[tuple] = set()  # layouts that step eagerly (none cached, or failed)
        self._keys: dict[tuple, str] = {}  # layout -> cache key, for the current weights
        self._state: dict[str, torch.Tensor] = {}  # the step's weight inputs, by name
        self._weights: list[torch.Tensor] = []  # the same, in the step's input order
        self._signature: list[tuple] = []
        self.refresh_weights()

    @property
    def compiled_layouts(self) -> set[tuple]:
        """The input layouts compiled (or loaded from the disk cache) so far."""
        return set(self._runners)

    @property
    def compiling(self) -> set[tuple]:
        """The layouts another process is compiling now (mode "background")."""
        return {layout for layout, process in self._compiling.items() if process.poll() is None}

    def cache_length(self, max_len: int) -> int:
        """The KV cache length to allocate for `max_len` tokens. Each length is its own compiled
        graph: rounded up to a power of two, a few graphs serve every request (attention reads
        only the filled slots either way). Called for every new cache, so it re-reads weights."""
        self.refresh_weights()
        return min(max(256, 1 << (max_len - 1).bit_length()), self.model.config.max_seq_len)

    def refresh_weights(self) -> None:
        """Take the model's current weight tensors (`cache_length` calls this for every
        generation, so weights replaced since, by fine-tuning or `.to()`, are the ones read);
        new shapes, strides or types make the compiled libraries stale, so they are dropped."""
        model = self.model
        state = {f"model.{name}": t for name, t in model.named_parameters()}
        state.update((f"model.{name}", t) for name, t in model.named_buffers())
        signature = [(n, t.shape, t.stride(), t.dtype, t.device) for n, t in state.items()]
        if signature != self._signature:
            self._runners.clear()
            self._eager.clear()
            self._keys.clear()
            self._signature = signature
        self._state = state
        self._weights = list(state.values())

    def layout(self, batch_size: int, max_len: int, padded: bool) -> tuple:
        """The input layout of a cache: what one compiled library is made for."""
        dtype, device = self.model.dtype, next(self.model.parameters()).device
        return (batch_size, max_len, dtype, str(device), padded)

    def may_step(self, batch_size: int, max_len: int) -> bool:
        """Whether a cache of this size may ever be stepped compiled (mode "cached": only when
        a library for it is on disk; otherwise the cache is made as the eager model makes it)."""
        if self.mode != "cached":
            return True
        layouts = (self.layout(batch_size, max_len, padded) for padded in (False, True))
        return any(self.library_path(layout).exists() for layout in layouts)

    @staticmethod
    def accepts(cache: KVCache) -> bool:
        """Whether the next token's step can run compiled: not at the cache's first or last slot,
        which would make the key count a constant of the graph."""
        return 2 <= cache.length + 1 < cache.max_len and cache.max_len >= 4

    def ready(self, cache: KVCache, mask: torch.Tensor | None = None) -> bool:
        """Whether the library for this cache's layout is loaded (or loads now). Mode "now"
        compiles it here; "background" starts another process compiling it, and says False
        (eager) until that process is done; "cached" says whether the disk cache has it."""
        padded = cache.has_padding or (mask is not None and not bool(mask.all()))
        layout = _layout_of(cache, padded)
        if layout in self._runners:
            return True
        if layout in self._eager:
            return False
        process = self._compiling.get(layout)
        if process is not None:
            if process.poll() is None:
                return False  # still compiling
            del self._compiling[layout]
            if process.returncode != 0:
                self._eager.add(layout)
                _warn_background_failure(process)
                return False
        path = self.library_path(layout)
        in_background = self.mode == "background" and layout[3] == "cpu"  # (a GPU's: "now")
        if path.exists() or self.mode == "now" or (self.mode == "background" and not in_background):
            self._runners[layout] = self._load(layout)
            return True
        if in_background:
            self._compiling[layout] = _start_background_compile(self.source, layout, path)
        else:
            self._eager.add(layout)  # "cached", and nothing on disk: eager from here on
        return False

    def wait(self) -> None:
        """Wait for the background compiles under way (the next steps then run compiled)."""
        for process in list(self._compiling.values()):
            process.wait()

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int
    ) -> torch.Tensor:
        """Logits (batch, 1, vocab) for one token per row written at slot `start` (a slot the
        cache `accepts`, of a layout that is `ready`)."""
        n_keys = start + 1
        layout = _layout_of(cache, cache.has_padding)
        runner = self._runners.get(layout)
        if runner is None:
            runner = self._runners[layout] = self._load(layout)
        slot = torch.tensor([start], device=tokens.device)
        inputs = [*self._weights, tokens.contiguous(), positions.contiguous(), slot]
        return runner.run([*inputs, cache.valid[:, :n_keys], *cache.k, *cache.v])[0]

    def library_path(self, layout: tuple) -> Path:
        """Where the compiled step for `layout` is cached (a file named by its cache key)."""
        key = self._keys.get(layout)
        if key is None:  # (a digest of ~300 weight layouts: once per layout and weights)
            key = self._keys[layout] = _cache_key(layout, self._state, self.model)
        return _compiled_dir() / f"decode-step-{key}.pt2"

    def compile(self, layout: tuple) -> Path:
        """Compile `layout`'s library into the disk cache now (unless it is there); its path."""
        path = self.library_path(layout)
        if not path.exists():
            _compile(_DecodeStep(self.model, padded=layout[-1]), self._state, layout, path)
        return path

    def _load(self, layout: tuple):
        """The library for `layout` from the disk cache, compiled first if it is not there (or
        if the cached file does not load: a damaged file is replaced, not trusted)."""
        path = self.library_path(layout)
        device = torch.device(layout[3])
        device_index = -1 if device.type == "cpu" else (device.index or 0)
        if path.exists():
            try:
                return torch._C._aoti.AOTIModelPackageLoader(
                    str(path), "model", False, 1, device_index
                )
            except RuntimeError:
                path.unlink(missing_ok=True)
        _compile(_DecodeStep(self.model, padded=layout[-1]), self._state, layout, path)
        return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, device_index)


def _layout_of(cache: KVCache, padded: bool) -> tuple:
    """The input layout a cache is stepped in: (rows, slots, dtype, device, padded)."""
    k0 = cache.k[0]
    return (k0.shape[0], k0.shape[2], k0.dtype, str(k0.device), padded)


def cpp_compiler() -> str | None:
    """The C++ compiler AOTInductor would use ($CXX, else g++, c++ or clang++), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((found for name in names if (found := shutil.which(name))), None)


def _start_background_compile(source: dict, layout: tuple, path: Path) -> subprocess.Popen:
    """Another Python process that loads `source` as this one did and compiles `layout` into
    `path` (`lmforge.generation.compile_worker`), on one thread, so generation keeps the
    other cores. It is not this process's to stop: a compile outlives a short run, and the next
    run finds the library."""
    batch, max_len, dtype, device, padded = layout
    spec = {
        **source,
        "layout": [batch, max_len, str(dtype).removeprefix("torch."), device, padded],
        "library": str(path),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    log = tempfile.TemporaryFile()  # noqa: SIM115 (read when it ends; a pipe could fill)
    process = subprocess.Popen(
        [sys.executable, "-m", "lmforge.generation.compile_worker", json.dumps(spec)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
        start_new_session=True,  # a Ctrl-C at the terminal stops the run, not the compile
    )
    process.log = log
    return process


def _warn_background_failure(process: subprocess.Popen) -> None:
    process.log.seek(0)
    lines = process.log.read().decode(errors="replace").strip().splitlines()
    error = lines[-1] if lines else f"exit status {process.returncode}"
    warnings.warn(
        f"compiling the decode step in the background failed ({error}); decoding goes on eagerly",
        RuntimeWarning,
        stacklevel=4,
    )


def _compile(step: _DecodeStep, state: dict, layout: tuple, path: Path) -> None:
    """Export the step for `layout` and compile it into the package `path` (written atomically)."""
    import torch._inductor
    import torch.export

    max_len, n_weights, n_layer = layout[1], len(state), step.model.config.n_layer
    n_keys = torch.export.Dim("n_keys", min=2, max=max_len - 1)
    dynamic = (
        [None] * n_weights,
        None,
        None,
        None,
        {1: n_keys},
        [None] * n_layer,
        [None] * n_layer,
    )
    # Outside inference mode: exported there, the weights would be baked in as constants.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # PyTorch's own deprecation notices from inside export/inductor, not the user's business.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        exported = torch.export.export(
            _WeightsAsInputs(step, list(state)),
            _example_inputs(step.model, state, layout),
            dynamic_shapes=dynamic,
            strict=False,
        )
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".pt2")
        os.close(fd)
        try:
            torch._inductor.aoti_compile_and_package(
                exported, package_path=partial, inductor_configs=dict(INDUCTOR_OPTIONS)
            )
            os.replace(partial, path)
        except Exception as error:  # inductor's own errors: a missing C++ compiler is the usual
            raise LMForgeError(
                f"compile=True: compiling the decode step failed ({type(error).__name__}: "
                f"{str(error).strip()[:500]}). AOTInductor needs a C++ compiler (g++ or clang) "
                "on the PATH; or run without compile=True / --compile"
            ) from error
        finally:
            Path(partial).unlink(missing_ok=True)


def _example_inputs(model: GPT, state: dict, layout: tuple) -> tuple:
    """Step inputs of `layout`'s shapes and strides, uninitialised (tracing reads only shapes,
    so no memory is touched), with 3 keys to attend to."""
    batch, max_len, dtype, device, _ = layout
    cfg = model.config
    weights = [
        torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
        for t in state.values()
    ]
    kv_shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
    k = [torch.empty(kv_shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
    v = [torch.empty(kv_shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
    valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)[:, :3]
    ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
    slot = torch.tensor([2], device=device)
    return weights, ids, ids.clone(), slot, valid, k, v


def _cache_key(layout: tuple, state: dict, model: GPT) -> str:
    """A digest of everything the compiled library depends on: PyTorch and CPU kernels, the
    traced source code, the model's configuration, module types and weight layouts, the input
    layout. Not the weights' values: they are inputs."""
    config = {k: v for k, v in model.config.to_dict().items() if k != "extra"}
    description = {
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "options": INDUCTOR_OPTIONS,
        "layout": [str(part) for part in layout],
        "config": config,
        "modules": [type(m).__qualname__ for m in model.modules()],
        "weights": [
            (name, list(t.shape), list(t.stride()), str(t.dtype), t.device.type)
            for name, t in state.items()
        ],
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
    digest.update(_traced_sources_digest())
    return digest.hexdigest()[:24]


@functools.cache
def _traced_sources_digest() -> bytes:
    """A digest of the code a step is traced from (read once a process)."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for source in _TRACED_SOURCES:
        digest.update((here / source).resolve().read_bytes())
    return digest.digest()


def _compiled_dir() -> Path:
    """Where compiled steps are kept: beside lmforge's other caches, or, when caching is off
    (LMFORGE_CACHE_DIR=off) or that directory cannot be written, a scratch one of this process."""
    root = cache_root()
    if root is not None:
        try:
            (root / "compiled").mkdir(parents=True, exist_ok=True)
            if os.access(root / "compiled", os.W_OK):
                return root / "compiled"
        except OSError:
            pass
    return Path(_scratch_dir().name)


@functools.cache
def _scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="lmforge-compiled-")
