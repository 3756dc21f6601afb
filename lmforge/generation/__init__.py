"""One generation engine for every model: processors, greedy/sampling/beam search, streaming."""

from lmforge.generation.config import GenerationConfig
from lmforge.generation.search import (
    Completion,
    StreamEvent,
    beam_search,
    generate_tokens,
    stream_tokens,
)

__all__ = [
    "GenerationConfig",
    "Completion",
    "StreamEvent",
    "beam_search",
    "generate_tokens",
    "stream_tokens",
]
