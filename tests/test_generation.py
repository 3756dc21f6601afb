"""Generation behaviour: streaming, stop strings, seeds, finish reasons, bad options."""

import pytest

import lmforge
from lmforge.generation.stream import TextAssembler


@pytest.fixture(scope="module")
def lm(tiny_gpt2_dir):
    return lmforge.load(tiny_gpt2_dir[0])


def _byte_to_id(tokenizer, byte):
    """The token of a single byte (GPT-2's table: printable latin-1 bytes stand for themselves,
    the others for chr(256 + n))."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    if byte in printable:
        symbol = chr(byte)
    else:
        symbol = chr(256 + [b for b in range(256) if b not in printable].index(byte))
    return tokenizer.backend.token_to_id(symbol)


def test_stream_never_emits_broken_utf8(lm):
    text = "héllo 😀 東京 👩‍👩‍👧!"
    ids = [_byte_to_id(lm.tokenizer, b) for b in text.encode("utf-8")]
    assembler = TextAssembler(lm.tokenizer, stop=[])
    deltas = [assembler.add(i) for i in ids] + [assembler.finish()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text
    assert sum(1 for d in deltas if d) < len(
        ids
    )  # multi-byte characters waited for their last byte


def test_stop_string_split_across_tokens(lm):
    tok = lm.tokenizer
    ids = tok.encode("alpha beta ### gamma")
    assert len(ids) >= 4
    assembler = TextAssembler(tok, stop=["##"])
    deltas = [assembler.add(i) for i in ids]
    assert assembler.stopped
    assert "".join(deltas) + assembler.finish() == "alpha beta "
    # a stop string that starts mid-token and ends in the next token
    assembler = TextAssembler(tok, stop=["a be"])
    streamed = "".join(assembler.add(i) for i in ids) + assembler.finish()
    assert streamed == "alph"


def test_held_back_text_is_released_when_no_stop_follows(lm):
    tok = lm.tokenizer
    assembler = TextAssembler(tok, stop=["world peace"])
    streamed = (
        "".join(assembler.add(i) for i in tok.encode("hello world order")) + assembler.finish()
    )
    assert streamed == "hello world order" and not assembler.stopped


def test_stream_and_generate_agree(lm):
    options = dict(max_new_tokens=15, temperature=0.9, top_k=50, seed=7)
    events = list(lm.stream("Once upon", **options))
    result = lm.generate("Once upon", **options)
    assert [e.token_id for e in events] == result.token_ids
    assert "".join(e.text for e in events) == result.text
    assert events[-1].finish_reason == result.finish_reason == "length"


def test_seed_reproducible_and_different_seeds_differ(lm):
    a = lm.generate("The", max_new_tokens=20, temperature=1.0, seed=1).token_ids
    b = lm.generate("The", max_new_tokens=20, temperature=1.0, seed=1).token_ids
    c = lm.generate("The", max_new_tokens=20, temperature=1.0, seed=2).token_ids
    assert a == b and a != c


def test_num_return_sequences_sampling(lm):
    results = lm.generate("The", max_new_tokens=8, temperature=1.0, seed=0, num_return_sequences=3)
    assert len(results) == 3 and len({tuple(r.token_ids) for r in results}) > 1


def test_finish_reasons(lm):
    first = lm.generate("The", max_new_tokens=5).token_ids[0]
    assert lm.generate("The", max_new_tokens=5).finish_reason == "length"
    assert lm.generate("The", max_new_tokens=5, eos_token_ids=[first]).finish_reason == "eos"
    text = lm.generate("The", max_new_tokens=12).text
    stop = text[3:6]
    stopped = lm.generate("The", max_new_tokens=12, stop=[stop])
    assert stopped.finish_reason == "stop" and stopped.text == text[: text.index(stop)]


def test_empty_prompt_starts_from_bos(lm):
    result = lm.generate("", max_new_tokens=4)
    assert result.prompt_tokens == 1 and len(result.token_ids) == 4


def test_max_new_tokens_zero(lm):
    result = lm.generate("Hi", max_new_tokens=0)
    assert result.token_ids == [] and result.text == "" and result.finish_reason == "length"
    (event,) = list(lm.stream("Hi", max_new_tokens=0))
    assert event.token_id is None and event.finish_reason == "length"


def test_prompt_longer_than_context(lm):
    long_prompt = list(range(200))  # context is 128
    with pytest.raises(lmforge.ConfigError, match="context is 128.*truncate"):
        lm.generate(long_prompt, max_new_tokens=4)
    result = lm.generate(long_prompt, max_new_tokens=4, truncate="left")
    # the prompt keeps its end; generation then slides past the context (the cache is rebuilt)
    assert result.prompt_tokens == 127 and len(result.token_ids) == 4


@pytest.mark.parametrize(
    "options, name",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.2}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"num_beams": 0}, "num_beams"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"frequency_penalty": 3.0}, "frequency_penalty"),
        ({"min_p": 2.0}, "min_p"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"stop": [""]}, "stop"),
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_options_name_the_option(lm, options, name):
    with pytest.raises(lmforge.ConfigError, match=name):
        lm.generate("Hi", **options)


def test_logit_bias_out_of_vocabulary(lm):
    with pytest.raises(lmforge.ConfigError, match="logit_bias"):
        lm.generate("Hi", logit_bias={10**9: 1.0})


def test_logit_bias_forces_a_token(lm):
    result = lm.generate("Hi", max_new_tokens=3, logit_bias={42: 100.0})
    assert result.token_ids == [42, 42, 42]


def test_no_chat_template_is_a_clear_error(lm):
    with pytest.raises(lmforge.ConfigError, match="no chat template"):
        lm.chat([{"role": "user", "content": "hi"}])
