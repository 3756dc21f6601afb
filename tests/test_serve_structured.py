"""Structured output and tool calling through the official `openai` client against `lmforge serve`."""

from __future__ import annotations

import concurrent.futures
import copy
import json

import httpx
import jsonschema
import openai
import pydantic
import pytest
import torch

from lmforge.serve.tools import ReplyStream
from tests.schemas import SCHEMAS
from tests.serving import MODEL, Server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now, in UTC"},
}


class Person(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=20)
    age: int = pydantic.Field(ge=0, le=120)


@pytest.fixture(scope="module")
def server(smollm):
    running = Server(smollm, max_tokens=128, max_n=4)
    yield running
    running.stop()


def test_response_format_json_schema_parses_into_a_pydantic_model(server):
    client = server.client()
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        response_format=Person,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and completion.choices[0].finish_reason == "stop"


def test_response_format_json_object_and_on_completions(server):
    client = server.client()
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a dog in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=100,
    )
    choice = reply.choices[0]
    assert choice.message.content.startswith("{") and "\n" not in choice.message.content
    if choice.finish_reason == "stop":  # (an open object may also run to max_tokens)
        assert isinstance(json.loads(choice.message.content), dict)
    request, schema = SCHEMAS[0]
    body = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    completion = client.completions.create(
        model=MODEL, prompt=request + "\n", max_tokens=60, extra_body={"response_format": body}
    )
    jsonschema.validate(json.loads(completion.choices[0].text), schema)


def test_tool_call_round_trip(server):
    client = server.client()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice="required", temperature=0
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in {"get_weather", "get_time"}
    json.loads(call.function.arguments)  # a JSON string, as OpenAI sends it
    messages.append(choice.message)  # the client's own object, sent back as it serialises it
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"})
    final = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], max_tokens=60, temperature=0
    )
    answer = final.choices[0]
    assert answer.finish_reason in {"stop", "tool_calls", "length"}
    if answer.finish_reason == "stop":
        assert isinstance(answer.message.content, str) and not answer.message.tool_calls
    with client.chat.completions.stream(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], max_tokens=60, temperature=0
    ) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == answer.finish_reason
    if answer.finish_reason != "length":  # (cut short, one streams what it decoded, one the text)
        assert streamed.message.content == answer.message.content
        assert [c.function.name for c in streamed.message.tool_calls or []] == [
            c.function.name for c in answer.message.tool_calls or []
        ]


def test_named_tool_choice_and_a_streamed_call(server):
    client = server.client()
    messages = [{"role": "user", "content": "Weather in Rome, please."}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice=named, temperature=0
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    with client.chat.completions.stream(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice=named, temperature=0
    ) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_completion()
    streamed_call = streamed.choices[0].message.tool_calls[0]
    assert streamed.choices[0].finish_reason == "tool_calls"
    assert streamed_call.function.name == "get_weather"
    assert json.loads(streamed_call.function.arguments) == json.loads(call.function.arguments)


def test_concurrent_constrained_and_free_requests_each_get_theirs(server, smollm):
    client = server.client()
    request, schema = SCHEMAS[2]
    messages = [{"role": "user", "content": request}]
    formats = [
        {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}},
        None,
    ] * 2

    def one(response_format):
        extra = {"response_format": response_format} if response_format else {}
        return client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=40, temperature=0, **extra
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(one, formats))
    alone = smollm.chat(messages, max_new_tokens=40)
    for response_format, reply in zip(formats, replies, strict=True):
        text = reply.choices[0].message.content
        if response_format:
            jsonschema.validate(json.loads(text), schema)
        else:
            assert text == alone.text


def test_developer_role_null_defaults_and_text_parts(server):
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Hi!"}]},
        ],
        "temperature": None,
        "top_p": None,
        "max_tokens": 8,
        "store": False,
        "metadata": {"run": "1"},
        "seed": None,
    }
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "extra, param, fragment",
    [
        ({"tool_choice": "required"}, "tool_choice", "tool_choice needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "not in tools",
        ),
        (
            {"tools": [{**WEATHER, "function": {"name": "f", "parameters": {"type": "strin"}}}]},
            "tools.0.function.parameters",
            "Invalid type",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "needs json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "strict": True,
                        "schema": {"type": "object", "not": {}},
                    },
                }
            },
            "response_format",
            "Unimplemented keys",
        ),
        ({"regex": "a(b"}, "regex", "regex cannot be compiled"),
        ({"audio": {"voice": "alloy"}}, "audio", "does not support audio"),
        ({"frobnicate": 1}, "frobnicate", "Extra inputs"),
    ],
)
def test_bad_structured_requests_are_clear_400s(server, extra, param, fragment):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json={**body, **extra}, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).status_code == 200


def test_a_tool_message_needs_its_call_id(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="tool_call_id"):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}],
            max_tokens=4,
        )


def test_logprob_bytes_of_cjk_and_emoji_tokens_make_the_text(server):
    """Byte-level tokens split characters; each token's bytes are its real bytes."""
    text = "你好世界🙂 café"
    client = server.client()
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello in Chinese."}],
        extra_body={"regex": text},
        logprobs=True,
        top_logprobs=3,
    )
    choice = reply.choices[0]
    assert choice.message.content == text
    tokens = choice.logprobs.content
    assert len(tokens) > len(text) // 2  # characters were split across tokens
    assert b"".join(bytes(t.bytes) for t in tokens) == text.encode("utf-8")
    completion = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=20, logprobs=5, extra_body={"regex": text}
    )
    keys = [
        key for alternatives in completion.choices[0].logprobs.top_logprobs for key in alternatives
    ]
    assert completion.choices[0].text == text
    assert all(
        len(alternatives) == 5 for alternatives in completion.choices[0].logprobs.top_logprobs
    )
    assert any(key.startswith("bytes:\\x") for key in keys)


def test_embeddings_for_a_string_a_list_and_token_ids(server, smollm):
    client = server.client()
    texts = ["The cat sat on the mat.", "A kitten rested on a rug.", "Stocks fell sharply."]
    one = client.embeddings.create(model=MODEL, input=texts[0])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 576
    many = client.embeddings.create(model=MODEL, input=texts)  # the client asks for base64
    vectors = torch.tensor([d.embedding for d in many.data])
    assert torch.allclose(vectors, smollm.embed(texts), atol=1e-5)
    assert torch.allclose(vectors[0], torch.tensor(one.data[0].embedding), atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated
    assert many.usage.prompt_tokens == sum(len(smollm.tokenizer.encode(t)) for t in texts)
    floats = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": MODEL, "input": [smollm.tokenizer.encode(texts[0])]},
        timeout=60,
    ).json()
    assert torch.allclose(torch.tensor(floats["data"][0]["embedding"]), vectors[0], atol=1e-5)


@pytest.mark.parametrize(
    "body, param, fragment",
    [
        ({"input": ""}, "input", "input 0 is empty"),
        ({"input": []}, "input", "give 1 to 2048"),
        ({"input": "word " * 3000}, "input", "reads at most"),
        ({"input": "hi", "dimensions": 64}, "dimensions", "cannot be shortened"),
        ({"input": [[1, 2, 10**9]]}, "input", "outside"),
    ],
)
def test_bad_embedding_requests(server, body, param, fragment):
    reply = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL, **body}, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param and fragment in reply.json()["error"]["message"]
    fine = {"model": MODEL, "input": "word"}
    assert httpx.post(f"{server.url}/v1/embeddings", json=fine, timeout=60).status_code == 200


def test_an_over_long_embedding_input_is_cut_when_asked(server):
    long = {"model": MODEL, "input": "word " * 3000, "truncate": True}
    reply = httpx.post(f"{server.url}/v1/embeddings", json=long, timeout=60)
    assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] == 2048


@pytest.mark.parametrize("step", [1, 2, 5])
def test_a_reply_streams_as_openai_deltas_however_it_is_split(step):
    """Tool calls: id, type and name first, then the arguments' text (escapes, brackets in
    strings); a response: its text, escapes and surrogate pairs decoded across pieces."""
    calls = {"a": 'Ro"me\\', "b": [1, {"c": "}]"}]}
    text = json.dumps(
        {
            "tool_calls": [
                {"name": "get_weather", "arguments": calls},
                {"name": "t", "arguments": {}},
            ]
        }
    )
    stream, bodies = ReplyStream(), []
    for start in range(0, len(text), step):
        bodies += stream.bodies(0, text[start : start + step], None)
    bodies += stream.bodies(0, "", "stop")
    assert bodies[0]["delta"]["role"] == "assistant" and bodies[-1]["finish_reason"] == "tool_calls"
    names, arguments = {}, {}
    for body in bodies:
        for call in body["delta"].get("tool_calls", []):
            if "id" in call:
                assert call["type"] == "function" and call["id"].startswith("call_")
                names[call["index"]] = call["function"]["name"]
            arguments[call["index"]] = (
                arguments.get(call["index"], "") + call["function"]["arguments"]
            )
    assert names == {0: "get_weather", 1: "t"}
    assert [json.loads(arguments[i]) for i in (0, 1)] == [calls, {}]

    text = json.dumps({"response": 'Say "hi" \U0001f600 café'})  # \ud83d\ude00, \u00e9 escapes
    stream, bodies = ReplyStream(), []
    for start in range(0, len(text), step):
        bodies += stream.bodies(0, text[start : start + step], None)
    bodies += stream.bodies(0, "", "stop")
    assert "".join(b["delta"].get("content") or "" for b in bodies) == 'Say "hi" \U0001f600 café'
    assert bodies[-1]["finish_reason"] == "stop"
    empty = ReplyStream().bodies(0, '{"response": ""}', "stop")  # still says whose reply it is
    assert empty == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": "stop"}
    ]  # fmt: skip


HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.' }}

You may call functions. Their signatures are within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each call, return a JSON object with the function name and arguments within <tool_call></tool_call> tags.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_a_template_with_its_own_tool_format_lists_tools_and_calls_in_tags(smollm):
    """A Hermes-style template (Qwen2.5's kind) renders the tools, earlier calls and results
    itself; a required call is constrained to its tags and read back as OpenAI's tool_calls."""
    lm = copy.copy(smollm)
    lm.tokenizer = copy.copy(smollm.tokenizer)
    lm.tokenizer.chat_template = HERMES_TEMPLATE
    running = Server(lm, max_tokens=96)
    try:
        client = running.client()
        messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
        args = dict(model=MODEL, tools=[WEATHER, TIME], temperature=0, parallel_tool_calls=False)
        reply = client.chat.completions.create(messages=messages, tool_choice="required", **args)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        call = choice.message.tool_calls[0]
        assert call.function.name in {"get_weather", "get_time"}
        json.loads(call.function.arguments)
        with client.chat.completions.stream(
            messages=messages, tool_choice="required", **args
        ) as stream:
            streamed = stream.get_final_completion()
        streamed_call = streamed.choices[0].message.tool_calls[0]
        assert streamed_call.function.name == call.function.name
        assert streamed_call.function.arguments == call.function.arguments
        messages += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": "Snow"}]
        final = client.chat.completions.create(messages=messages, max_tokens=30, **args)
        assert final.choices[0].finish_reason in {"stop", "length", "tool_calls"}
    finally:
        running.stop()
    rendered = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tools=[WEATHER], add_generation_prompt=True
    )
    assert '"name": "get_weather"' in rendered and "<tools>" in rendered
