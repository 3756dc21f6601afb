"""Every model type runs through the model protocol of `lmforge.models.protocol`: the same calls
give the same answers whichever model it is, and each declared capability does what it says."""

from __future__ import annotations

import pytest
import torch

from lmforge.models.presets import build_model
from lmforge.models.protocol import GenerationCache, LanguageModel

VOCAB, BLOCK = 37, 32
MODELS = {
    "gpt2": dict(arch="gpt", n_layer=2, n_head=2, n_embd=16, family="gpt2"),
    "llama": dict(arch="gpt", n_layer=2, n_head=2, n_embd=16, family="llama"),
    # a sliding window of 8 (BLOCK / 4), which the tests' longer sequences pass
    "gemma3": dict(arch="gpt", n_layer=2, n_head=2, n_embd=16, family="gemma3"),
    "lstm": dict(arch="lstm", n_layer=2, n_embd=16),
    "gru": dict(arch="gru", n_layer=1, n_embd=16),
    "rnn": dict(arch="rnn", n_layer=1, n_embd=16),
    "transformer": dict(arch="transformer", n_layer=2, n_head=2, n_embd=16),
}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    torch.manual_seed(0)
    options = dict(MODELS[request.param])
    arch = options.pop("arch")
    return build_model(arch, VOCAB, BLOCK, dropout=0.0, **options).eval()


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_declares_the_protocol(model):
    assert isinstance(model, LanguageModel)
    cache = model.new_cache(2, 16)
    assert isinstance(cache, GenerationCache)
    assert isinstance(model.stateful, bool) and isinstance(cache.bounded, bool)
    assert isinstance(cache.prunable, bool)
    described = model.describe()
    assert described["parameters"] == model.num_parameters() > 0


@torch.no_grad()
def test_step_by_step_with_a_cache_gives_the_whole_sequence_logits(model):
    ids = torch.randint(VOCAB, (2, 9))
    whole, _ = model(ids)
    cache = model.new_cache(2, 16)
    logits, cache = model(ids[:, :4], cache)
    steps = [logits]
    for t in range(4, 9):
        logits, cache = model(ids[:, t : t + 1], cache, last_only=True)
        steps.append(logits)
    close(torch.cat(steps, dim=1), whole)


@torch.no_grad()
def test_a_left_padded_row_gives_the_logits_it_gives_alone(model):
    alone, _ = model(torch.tensor([[5, 6, 7]]), model.new_cache(1, 16), last_only=True)
    batch = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    padded, cache = model(batch, model.new_cache(2, 16), positions, mask, last_only=True)
    close(padded[0], alone[0])
    # and the padding stays invisible to the next step
    step, _ = model(torch.tensor([[8], [8]]), cache, positions[:, -1:] + 1, last_only=True)
    again, _ = model(torch.tensor([[5, 6, 7, 8]]), last_only=True)
    close(step[0], again[0])


@torch.no_grad()
def test_reordering_the_cache_reorders_what_comes_next(model):
    ids = torch.randint(VOCAB, (2, 5))
    cache = model.new_cache(2, 16)
    _, cache = model(ids, cache)
    cache.reorder(torch.tensor([1, 1]))
    step, _ = model(torch.tensor([[3], [4]]), cache, last_only=True)
    for row, token in enumerate((3, 4)):
        expected, _ = model(torch.cat((ids[1], torch.tensor([token])))[None], last_only=True)
        close(step[row], expected[0])


@torch.no_grad()
def test_a_rewindable_cache_forgets_its_newest_tokens(model):
    cache = model.new_cache(1, 16)
    if not cache.rewindable:
        pytest.skip(f"{type(cache).__name__} declares it cannot rewind")
    ids = torch.randint(VOCAB, (1, 6))
    _, cache = model(ids, cache)
    cache.truncate(4)
    logits, _ = model(torch.tensor([[9]]), cache, last_only=True)
    expected, _ = model(torch.cat((ids[0, :4], torch.tensor([9])))[None], last_only=True)
    close(logits, expected)


@torch.no_grad()
def test_a_stateful_model_carries_a_text_across_chunks(model):
    if not model.stateful:
        pytest.skip(f"{type(model).__name__} declares no state across chunks")
    ids = torch.randint(VOCAB, (1, 50))  # longer than any window: only a state carries it
    whole, _ = model(ids)
    first, state = model(ids[:, :20])
    second, _ = model(ids[:, 20:], state)
    close(torch.cat((first, second), dim=1), whole)


@torch.no_grad()
def test_trace_fills_the_views_it_declares(model):
    ids = torch.randint(VOCAB, (1, 7))
    trace = model.trace(ids)
    close(trace.logits, model(ids)[0])
    views = set(model.trace_views)
    assert views <= {"attention", "lens", "states"}
    if "attention" in views:
        assert len(trace.attentions) == model.config.n_layer
        for weights in trace.attentions:  # causal rows of probabilities
            close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
            assert float(weights[..., 0, 1:].abs().max()) == 0.0
    if "lens" in views:
        close(trace.read_out(trace.hidden_states[-1]), trace.logits)
    if "states" in views:
        hidden = trace.states["hidden state"]
        assert len(hidden) == model.config.n_layer and hidden[0].shape[0] == 7


def test_a_recurrent_bundle_written_under_the_old_size_name_still_loads(tmp_path):
    """Model configs name the embedding size `d_model` everywhere; RNN bundles on disk from
    before say `n_embd`, and load as they are."""
    import json

    import lmforge
    from lmforge.checkpoints.bundle import save_bundle
    from lmforge.tokenizers.train import train_char_tokenizer

    tokenizer = train_char_tokenizer(["abcdefghij"])
    model = build_model("lstm", tokenizer.vocab_size, BLOCK, n_embd=12, n_layer=1).eval()
    save_bundle(model, tokenizer, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["lmforge_config"]["n_embd"] = config["lmforge_config"].pop("d_model")
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = lmforge.load(tmp_path).model
    assert loaded.config.d_model == 12
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        close(loaded(ids)[0], model(ids)[0])
