"""Speculative greedy decoding gives exactly the plain greedy tokens, with fewer forward passes."""

import pytest
import torch

import lmforge
from lmforge.errors import ConfigError
from lmforge.generation.speculative import PromptLookupDrafter

REPETITIVE = (
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
    "def mul(a, b):\n    return a * b\n\n\ndef"
)


def test_prompt_lookup_drafter_copies_what_followed_the_last_ngram():
    drafter = PromptLookupDrafter(max_ngram=3)
    assert drafter.propose([1, 2, 3, 4, 5, 9, 2, 3], 3) == [4, 5, 9]
    assert drafter.propose([1, 2, 3, 4, 5, 9, 7, 3], 2) == [4, 5]  # falls back to a 1-gram
    assert drafter.propose([1, 2, 3], 4) == []  # no earlier occurrence


class CountingModel(torch.nn.Module):
    """Wraps a model and counts forward passes."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_prompt_lookup_equals_greedy_on_smollm(smollm_path, quantize):
    lm = lmforge.load(smollm_path, quantize=quantize)
    prompts = [REPETITIVE, "The capital of France is", "Once upon a time"]
    checked = 0
    for prompt in prompts:
        plain = lm.generate(prompt, max_new_tokens=40, ignore_eos=True, top_logprobs=2)
        fast = lm.generate(prompt, max_new_tokens=40, ignore_eos=True, prompt_lookup_num_tokens=6)
        if quantize == "none":  # float32: exactly the same tokens, text and log-probabilities
            assert fast.token_ids == plain.token_ids
            assert fast.text == plain.text and fast.finish_reason == plain.finish_reason
            assert fast.logprobs == pytest.approx(plain.logprobs, abs=1e-3)
            continue
        # bfloat16 activations: the many-token verification pass rounds differently from the
        # one-token pass (seen: up to 0.18 nats per log-probability), so the same tokens are
        # guaranteed up to the first near-tie (top-2 gap under 0.3 nats) of plain greedy.
        gaps = [sorted(top.values())[-1] - sorted(top.values())[-2] for top in plain.top_logprobs]
        same = next((i for i, gap in enumerate(gaps) if gap < 0.3), len(gaps))
        assert fast.token_ids[:same] == plain.token_ids[:same]
        assert fast.logprobs[:same] == pytest.approx(plain.logprobs[:same], abs=0.3)
        checked += same
    assert quantize == "none" or checked >= 20, checked  # measured: 27 of 120
    counted = CountingModel(lm.model)
    lm_counted = lmforge.api.LM(counted, lm.tokenizer)
    lm_counted.generate(REPETITIVE, max_new_tokens=40, ignore_eos=True, prompt_lookup_num_tokens=6)
    assert counted.calls < 30  # plain greedy needs 40 passes; repeated code is drafted right


def test_draft_model_equals_greedy(tiny_llama_dir, tmp_path):
    from tests.conftest import save_random_hf_model

    target = lmforge.load(tiny_llama_dir[0])
    draft_dir = tmp_path / "draft"
    save_random_hf_model(draft_dir, "llama", num_hidden_layers=1)
    draft = lmforge.load(draft_dir)
    prompts = ["Hello there, how are", "1 2 3 4 5 6 7"]
    for prompt in prompts:
        plain = target.generate(prompt, max_new_tokens=30, ignore_eos=True)
        fast = target.generate(
            prompt, max_new_tokens=30, ignore_eos=True, draft_model=draft, num_draft_tokens=4
        )
        assert fast.token_ids == plain.token_ids
    # The target drafting for itself: every draft is accepted, far fewer target passes.
    counted = CountingModel(target.model)
    speculative = lmforge.api.LM(counted, target.tokenizer)
    result = speculative.generate(
        prompts[0], max_new_tokens=30, ignore_eos=True, draft_model=target, num_draft_tokens=4
    )
    assert (
        result.token_ids
        == target.generate(prompts[0], max_new_tokens=30, ignore_eos=True).token_ids
    )
    assert counted.calls <= 30 // 5 + 2


def test_speculative_streams_and_stops_like_greedy(smollm):
    plain = smollm.generate(REPETITIVE, max_new_tokens=30, stop=["mul"])
    events = list(
        smollm.stream(REPETITIVE, max_new_tokens=30, stop=["mul"], prompt_lookup_num_tokens=5)
    )
    assert "".join(e.text for e in events) == plain.text
    assert events[-1].finish_reason == plain.finish_reason
    reply = smollm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        max_new_tokens=30,
        prompt_lookup_num_tokens=4,
    )
    assert reply.finish_reason == "eos" and "Paris" in reply.text


def test_speculative_needs_greedy(smollm, tiny_llama_dir):
    with pytest.raises(ConfigError, match="prompt_lookup_num_tokens works with greedy"):
        smollm.generate("Hi", prompt_lookup_num_tokens=4, temperature=0.7)
    with pytest.raises(ConfigError, match="draft_model works with greedy"):
        smollm.generate("Hi", draft_model=smollm, num_beams=2)
    with pytest.raises(ConfigError, match="must share the model's tokenizer"):
        smollm.generate("Hi", draft_model=lmforge.load(tiny_llama_dir[0]))
    with pytest.raises(ConfigError, match="draft_model must be an lmforge LM"):
        smollm.generate("Hi", draft_model="small")
