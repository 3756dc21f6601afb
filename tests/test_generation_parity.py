"""Our generation engine vs transformers' generate, and our processors vs its processors."""

import pytest
import torch

import lmforge
from lmforge.generation import processors as P

PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away,", "Hello"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tiny_llama_dir, tiny_gpt2_dir):
    directory, hf_model = tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir
    return lmforge.load(directory), hf_model


def hf_generate(hf_model, ids, **kwargs):
    kwargs.setdefault("pad_token_id", 50256)
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([ids]), do_sample=False, top_k=None, top_p=None, **kwargs
        )
    return out[:, len(ids) :].tolist()


def strip_eos_padding(seq, eos=50256):
    return seq[: seq.index(eos) + 1] if eos in seq else seq


def test_greedy_matches_transformers(pair):
    lm, hf_model = pair
    for prompt in PROMPTS:
        ids = lm.tokenizer.encode(prompt)
        ours = lm.generate(ids, max_new_tokens=20).token_ids
        assert ours == strip_eos_padding(hf_generate(hf_model, ids, max_new_tokens=20)[0])


@pytest.mark.parametrize(
    "options",
    [
        {"num_beams": 3, "num_return_sequences": 3},
        {"num_beams": 4, "length_penalty": 0.5, "early_stopping": True, "num_return_sequences": 2},
        {"num_beams": 2, "length_penalty": 2.0, "early_stopping": "never"},
        {"num_beams": 3, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
    ],
)
def test_beam_search_matches_transformers(pair, options):
    lm, hf_model = pair
    for prompt in PROMPTS[:2]:
        ids = lm.tokenizer.encode(prompt)
        ours = lm.generate([ids], max_new_tokens=12, **options)
        theirs = hf_generate(hf_model, ids, max_new_tokens=12, **options)
        assert [c.token_ids for c in ours] == [strip_eos_padding(t) for t in theirs]


@pytest.mark.parametrize(
    "options",
    [
        {"num_beams": 4, "num_return_sequences": 4},
        {"num_beams": 4, "length_penalty": 0.5, "early_stopping": True, "num_return_sequences": 3},
        {
            "num_beams": 3,
            "length_penalty": 2.0,
            "early_stopping": "never",
            "num_return_sequences": 3,
        },
        {"num_beams": 3, "length_penalty": -1.0, "num_return_sequences": 2},
    ],
)
def test_beam_search_with_finished_hypotheses_matches_transformers(pair, options):
    """Random models never pick the real EOS, so take a token the best beam does pick as EOS:
    hypotheses then finish at different lengths and length_penalty / early_stopping decide."""
    lm, hf_model = pair
    finished_on_eos = 0
    for prompt in PROMPTS[:2]:
        ids = lm.tokenizer.encode(prompt)
        eos = lm.generate([ids], max_new_tokens=12, num_beams=4)[0].token_ids[3]
        ours = lm.generate([ids], max_new_tokens=12, eos_token_ids=[eos], **options)
        theirs = hf_generate(
            hf_model, ids, max_new_tokens=12, eos_token_id=eos, pad_token_id=eos, **options
        )
        assert [c.token_ids for c in ours] == [strip_eos_padding(t, eos) for t in theirs]
        finished_on_eos += sum(c.finish_reason == "eos" for c in ours)
    if options.get("length_penalty", 1.0) <= 1.0:  # a strong length bonus lets longer beams win
        assert finished_on_eos > 0


def test_batched_equals_one_at_a_time(pair):
    lm, _ = pair
    batched = lm.generate(PROMPTS, max_new_tokens=16)
    single = [lm.generate(p, max_new_tokens=16) for p in PROMPTS]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]
    assert [b.text for b in batched] == [s.text for s in single]


def test_batched_equals_one_at_a_time_on_smollm(smollm):
    prompts = ["The capital of France is", "Write a haiku about the sea.\n", "1, 2, 3,"]
    batched = smollm.generate(prompts, max_new_tokens=12)
    assert [b.token_ids for b in batched] == [
        smollm.generate(p, max_new_tokens=12).token_ids for p in prompts
    ]


def test_logprobs_are_the_models(pair):
    lm, _ = pair
    ids = lm.tokenizer.encode(PROMPTS[0])
    result = lm.generate(ids, max_new_tokens=6, temperature=0.7, seed=3, top_logprobs=3)
    full = torch.tensor([ids + result.token_ids])
    with torch.no_grad():
        logits, _ = lm.model(full)
    expected = torch.log_softmax(logits[0, len(ids) - 1 : -1].float(), dim=-1)
    chosen = expected.gather(1, torch.tensor(result.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(result.logprobs), chosen, atol=1e-4)
    assert list(result.top_logprobs[0]) == expected[0].topk(3).indices.tolist()
    # Without top_logprobs, the same tokens and logprobs (and no top lists).
    plain = lm.generate(ids, max_new_tokens=6, temperature=0.7, seed=3)
    assert plain.token_ids == result.token_ids and not plain.top_logprobs
    assert torch.allclose(torch.tensor(plain.logprobs), chosen, atol=1e-4)


def random_case(seed=0, rows=4, vocab=300, length=12):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, vocab, generator=g) * 3
    tokens = torch.randint(0, 40, (rows, length), generator=g)  # small id range: plenty of repeats
    return (
        scores,
        tokens,
        P.History(tokens, torch.ones_like(tokens, dtype=torch.bool), prompt_len=4),
    )


def hf_processors():
    import transformers as T

    return [
        (P.RepetitionPenalty(1.7), T.RepetitionPenaltyLogitsProcessor(1.7)),
        (P.NoRepeatNGram(2), T.NoRepeatNGramLogitsProcessor(2)),
        (P.NoRepeatNGram(3), T.NoRepeatNGramLogitsProcessor(3)),
        (P.Temperature(0.6), T.TemperatureLogitsWarper(0.6)),
        (P.TopK(17), T.TopKLogitsWarper(17)),
        (P.TopP(0.8), T.TopPLogitsWarper(0.8)),
        (P.TopP(0.05), T.TopPLogitsWarper(0.05)),
        (P.MinP(0.1), T.MinPLogitsWarper(0.1)),
        (P.TypicalP(0.7), T.TypicalLogitsWarper(0.7)),
        (
            P.LogitBias({5: 3.0, 7: -2.5}, 300),
            T.SequenceBiasLogitsProcessor({(5,): 3.0, (7,): -2.5}),
        ),
    ]


@pytest.mark.parametrize("index", range(10))
def test_processor_equals_transformers(index):
    ours, theirs = hf_processors()[index]
    for seed in range(3):
        scores, tokens, history = random_case(seed)
        expected = theirs(tokens, scores.clone())
        got = ours(history, scores.clone())
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
        finite = ~torch.isinf(expected)
        assert torch.allclose(got[finite], expected[finite], atol=1e-6)


def test_frequency_and_presence_penalties_follow_openai():
    scores = torch.zeros(1, 10)
    tokens = torch.tensor([[3, 3, 4, 3, 5, 5]])  # prompt: first 2; generated: 4, 3, 5, 5
    history = P.History(tokens, torch.ones_like(tokens, dtype=torch.bool), prompt_len=2)
    out = P.FrequencyPresencePenalty(frequency=0.5, presence=1.0)(history, scores)
    expected = torch.zeros(1, 10)
    expected[0, 3] = -(1 * 0.5 + 1.0)
    expected[0, 4] = -(1 * 0.5 + 1.0)
    expected[0, 5] = -(2 * 0.5 + 1.0)
    assert torch.equal(out, expected)


def test_padding_is_not_penalised():
    scores = torch.ones(1, 10)
    tokens = torch.tensor([[0, 0, 4]])
    valid = torch.tensor([[False, False, True]])
    out = P.RepetitionPenalty(2.0)(P.History(tokens, valid, 3), scores)
    assert out[0, 0] == 1.0 and out[0, 4] == 0.5
