"""Language models. Every model speaks one protocol:

    model(input_ids, cache=None, positions=None, mask=None, last_only=False) -> (logits, cache)
    model.new_cache(batch_size, max_len) -> cache

so one generation engine, trainer and evaluator serve them all.
"""

from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]
