"""OpenAI's structured output and tool calling, on constrained decoding.

`response_format` becomes a JSON constraint. Tools take one of two formats. A template with its
own tool format of the Hermes kind (Qwen2.5/3, Hermes, SmolLM3: calls as JSON between
`<tool_call>` tags) lists the tools and renders earlier calls and results itself; decoding is
constrained to its calls where a call is required. Other templates (SmolLM2's, Gemma's) get a
generic format, as llama.cpp's generic handler does: the tool list and an instruction go into the
system message, decoding is constrained to `{"tool_calls": [{"name", "arguments"}, ...]}` or
`{"response": ...}`, and earlier calls and results are rendered in the same format. Either way
the reply is read back into OpenAI's `tool_calls` with fresh ids.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from lmforge.errors import ConfigError
from lmforge.generation.constraints import JSON_STYLE
from lmforge.serve.schemas import APIError, ChatRequest, Message, ResponseFormat

TAG = "<tool_call>"  # the Hermes kind of template: each call between <tool_call> and </tool_call>
STRING = {"type": "string"}
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass
class ChatPlan:
    """What a chat request asks of the engine: the conversation for the template, constraint
    options, and the format a reply carries tool calls in (None: no tools)."""

    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    tools: str | None = None  # "generic" or "tagged"
    tool_list: list[dict[str, Any]] | None = None  # for a template that lists tools itself


def response_format_options(response_format: ResponseFormat | None) -> dict[str, Any]:
    """The constraint `response_format` asks for (a schema without `strict: true` is read
    leniently: keywords the engine does not implement are ignored rather than refused)."""
    if response_format is None or response_format.type == "text":
        return {}
    if response_format.type == "json_object":
        return {"json": True}
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise APIError(
            400,
            "response_format: type json_schema needs json_schema.schema",
            param="response_format",
        )
    schema = dict(spec.schema_)
    if not spec.strict:
        schema["x-guidance"] = {**schema.get("x-guidance", {}), "lenient": True}
    return {"json_schema": schema}


def plan_chat(req: ChatRequest, template: str, check) -> ChatPlan:
    """The plan of a chat request. `check(**options)` validates constraint options (raising
    ConfigError), so a bad schema is named by the field it came from."""
    tagged = TAG in template
    messages = template_messages(req.messages, template, tagged)
    structured = response_format_options(req.response_format)
    _check(check, structured, "response_format")
    choice = req.tool_choice
    if choice is not None and not req.tools:
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    if not req.tools or choice == "none":
        return ChatPlan(messages, structured)

    names = [tool.function.name for tool in req.tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise APIError(400, f"tools[{i}]: a second tool named {name!r}", param="tools")
    parameters = {}
    for i, tool in enumerate(req.tools):
        parameters[tool.function.name] = tool.function.parameters or NO_ARGUMENTS
        param = f"tools.{i}.function.parameters"
        _check(check, {"json_schema": parameters[tool.function.name]}, param)
    callable_names = names
    if not isinstance(choice, str) and choice is not None:
        if choice.function.name not in names:
            raise APIError(
                400,
                f"tool_choice names {choice.function.name!r}, which is not in tools "
                f"({', '.join(names)})",
                param="tool_choice",
            )
        callable_names = [choice.function.name]

    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters[name]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name in callable_names
    ]
    single = not req.parallel_tool_calls or callable_names != names  # a named tool: one call
    must_call = choice == "required" or not isinstance(choice, str | None)
    if tagged:
        return _tagged_plan(req, messages, calls, single, must_call, structured)
    call_list = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if single:
        call_list["maxItems"] = 1
    tool_calls = _object("tool_calls", call_list)
    response = _object("response", structured.get("json_schema", STRING))
    if structured.get("json"):
        response = _object("response", {"type": "object"})
    schema = tool_calls if must_call else {"anyOf": [tool_calls, response]}
    listing = [
        {"name": tool.function.name, "description": tool.function.description or "",
         "parameters": parameters[tool.function.name]}
        for tool in req.tools
    ]  # fmt: skip
    instruction = f"You can call these tools:\n{json.dumps(listing, ensure_ascii=False)}\n" + (
        'Respond in JSON with "tool_calls": a list of calls, each with "name" and "arguments".'
        if must_call
        else 'Respond in JSON, either with "tool_calls" (a list of calls to tools, each with '
        '"name" and "arguments") or with "response" (your reply to the user).'
    )
    if messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{instruction}"}
    else:
        messages.insert(0, {"role": "system", "content": instruction})
    return ChatPlan(messages, {"json_schema": schema}, tools="generic")


def _tagged_plan(req, messages, calls, single, must_call, structured) -> ChatPlan:
    """The template lists the tools; a reply is calls between tags, each as JSON, or (unless a
    call is required) free text, or JSON where response_format asks for it."""
    call = {"anyOf": calls, "x-guidance": JSON_STYLE}
    rules = [
        "calls: call" if single else r'calls: call ("\n" call)*',
        r'call: "<tool_call>\n" arguments "\n</tool_call>"',
        f"arguments: %json {json.dumps(call)}",
    ]
    if must_call:
        start = "start: calls"
    elif structured:
        schema = structured.get("json_schema", {"type": "object"})
        start = "start: calls | response"
        style = {**JSON_STYLE, **schema.get("x-guidance", {})}
        rules.append(f"response: %json {json.dumps({**schema, 'x-guidance': style})}")
    else:
        start = "start: calls | TEXT"
        rules.append("TEXT: /[^<](?s:.*)/")  # anything not beginning like a call
    tool_list = [tool.model_dump(exclude_none=True) for tool in req.tools]
    grammar = "\n".join([start, *rules])
    return ChatPlan(messages, {"grammar": grammar}, tools="tagged", tool_list=tool_list)


def _object(key: str, value: dict) -> dict:
    return {
        "type": "object",
        "properties": {key: value},
        "required": [key],
        "additionalProperties": False,
    }


def _check(check, options: dict[str, Any], param: str) -> None:
    if not options:
        return
    try:
        check(**options)
    except ConfigError as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code="invalid_parameter") from None


def template_messages(messages: list[Message], template: str, tagged: bool) -> list[dict[str, Any]]:
    """OpenAI's messages as the chat template reads them: text parts joined, `developer` as
    `system` where the template has no such role. A template of the tagged kind renders calls and
    results itself (arguments as objects); otherwise they are written in the generic format (a
    `tool` role is kept where the template names it, else the result is a user message)."""
    rendered, names = [], {}
    for i, message in enumerate(messages):
        role, content = message.role, message.content
        text = content if isinstance(content, str) else "".join(p.text for p in content or [])
        entry: dict[str, Any] = {}
        if role == "developer" and "developer" not in template:
            role = "system"
        if role == "assistant" and message.tool_calls:
            calls = []
            for call in message.tool_calls:
                names[call.id] = call.function.name
                try:
                    arguments = json.loads(call.function.arguments)
                except json.JSONDecodeError:
                    raise APIError(
                        400,
                        f"messages[{i}].tool_calls: the arguments of {call.id!r} are not JSON",
                        param=f"messages.{i}.tool_calls",
                    ) from None
                calls.append({"name": call.function.name, "arguments": arguments})
            if tagged:
                entry["tool_calls"] = [
                    {"id": call.id, "type": "function", "function": body}
                    for call, body in zip(message.tool_calls, calls, strict=True)
                ]
            else:
                text = json.dumps({"tool_calls": calls}, ensure_ascii=False)
        elif role == "tool":
            if not message.tool_call_id:
                raise APIError(
                    400,
                    f"messages[{i}]: a tool message needs the tool_call_id it answers",
                    param=f"messages.{i}.tool_call_id",
                )
            entry["tool_call_id"] = message.tool_call_id
            if "tool" not in template:
                role = "user"
                result = {"name": names.get(message.tool_call_id), "content": text}
                text = json.dumps({"tool_response": result}, ensure_ascii=False)
        elif content is None and role != "assistant":
            raise APIError(
                400, f"messages[{i}]: a {role} message needs content", param=f"messages.{i}.content"
            )
        rendered.append({"role": role, "content": text, **entry})
    return rendered


def read_reply(text: str, tools: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a finished reply in the `tools` format ("generic" or "tagged")."""
    if tools == "tagged":
        bodies = re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.DOTALL)
        if not bodies:
            return text, []
        found = [json.loads(body) for body in bodies]
    else:
        data = json.loads(text)
        if "tool_calls" not in data:
            response = data["response"]
            return (response if isinstance(response, str) else json.dumps(response)), []
        found = data["tool_calls"]
    return None, [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": call["name"],
                "arguments": json.dumps(call["arguments"], ensure_ascii=False),
            },
        }
        for call in found
    ]


class ReplyStream:
    """Follows a reply in a tool format as it grows and says what to stream now. In the generic
    format: OpenAI's tool-call deltas (a call's id, type and name once its name is complete, then
    its arguments' JSON text as it comes, keyed by the call's index) or the response's text; the
    reply is constrained and compact, so each part is found at a known place. In the tagged
    format: text as it comes, or calls once the reply is complete."""

    CALLS, RESPONSE = '{"tool_calls": [', '{"response": '
    NAME, ARGUMENTS = '{"name": ', ', "arguments": '

    def __init__(self, tools: str = "generic"):
        self.tools = tools
        self.text, self.pos, self.state = "", 0, "start" if tools == "generic" else "tagged"
        self.calls = 0  # calls begun
        self.opened = False  # whether a delta went out (the first carries the role)
        self.depth, self.in_string, self.escaped = 0, False, False

    def bodies(self, choice: int, piece: str, finish_reason: str | None) -> list[dict]:
        """The streamed choices `piece` completes (the first with the assistant's role), and
        the last with the finish reason: "tool_calls" where calls were made and the reply was
        not cut short."""
        deltas = self.feed(piece)
        if finish_reason and finish_reason != "length" and self.state == "whole":
            content, calls = read_reply(self.text, self.tools)
            for index, call in enumerate(calls):
                function = call["function"]
                head = {"index": index, "id": call["id"], "type": "function"}
                deltas.append({"tool_calls": [{**head, "function": {**function, "arguments": ""}}]})
                args = {"index": index, "function": {"arguments": function["arguments"]}}
                deltas.append({"tool_calls": [args]})
            self.calls = len(calls)
            if not calls:
                deltas.append({"content": content})
        if finish_reason and finish_reason != "length":
            finish_reason = "tool_calls" if self.calls else finish_reason
        bodies = []
        for delta in deltas:
            if not self.opened:
                delta, self.opened = {"role": "assistant", "content": None, **delta}, True
            bodies.append(
                {"index": choice, "delta": delta, "logprobs": None, "finish_reason": None}
            )
        if finish_reason:
            last = {} if self.opened else {"role": "assistant", "content": ""}  # (an empty reply)
            bodies.append(
                {"index": choice, "delta": last, "logprobs": None, "finish_reason": finish_reason}
            )
        return bodies

    def feed(self, piece: str) -> list[dict]:
        """The deltas `piece` completes: {"tool_calls": [...]} or {"content": ...} dicts."""
        self.text += piece
        deltas: list[dict] = []
        while True:
            before = (self.state, self.pos)
            getattr(self, "_" + self.state)(deltas)
            if (self.state, self.pos) == before:
                return deltas

    def _start(self, deltas: list[dict]) -> None:
        for prefix, state in ((self.CALLS, "call"), (self.RESPONSE, "response")):
            if self.text.startswith(prefix):
                self.pos, self.state = len(prefix), state

    def _call(self, deltas: list[dict]) -> None:
        if not self.text.startswith(self.NAME, self.pos):
            return
        try:
            name, end = json.JSONDecoder().raw_decode(self.text, self.pos + len(self.NAME))
        except json.JSONDecodeError:
            return
        if not self.text.startswith(self.ARGUMENTS, end):
            return
        head = {"index": self.calls, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
        deltas.append({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
        self.calls += 1
        self.pos, self.state, self.depth = end + len(self.ARGUMENTS), "arguments", 0

    def _arguments(self, deltas: list[dict]) -> None:
        start, end = self.pos, len(self.text)
        for i in range(start, len(self.text)):
            char = self.text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    end = i + 1
                    self.state = "between"
                    break
        if end > start:
            fragment = {"index": self.calls - 1, "function": {"arguments": self.text[start:end]}}
            deltas.append({"tool_calls": [fragment]})
        self.pos = end

    def _between(self, deltas: list[dict]) -> None:
        if self.text.startswith("}, ", self.pos):
            self.pos, self.state = self.pos + 3, "call"
        elif self.text.startswith("}]}", self.pos):
            self.pos, self.state = self.pos + 3, "done"

    def _response(self, deltas: list[dict]) -> None:
        """A string response streams as its text; any other value (a response_format object)
        waits for the whole reply."""
        if self.pos < len(self.text):
            self.state = "text" if self.text[self.pos] == '"' else "whole"
            self.pos += self.state == "text"

    def _text(self, deltas: list[dict]) -> None:
        i, closed = self.pos, False
        while i < len(self.text):  # up to the last complete character of the string
            char = self.text[i]
            if char == '"':
                closed = True
                break
            if char != "\\":
                i += 1
                continue
            escape = self.text[i : i + 12]
            width = 6 if escape[1:2] == "u" else 2
            if escape[1:2] == "u" and escape[2:4].upper() in ("D8", "D9", "DA", "DB"):
                width = 12  # a surrogate pair
            if len(escape) < width:
                break
            i += width
        if i > self.pos:
            deltas.append({"content": json.loads('"' + self.text[self.pos : i] + '"')})
        self.pos = i + closed
        if closed:
            self.state = "done"

    def _tagged(self, deltas: list[dict]) -> None:
        """A reply of the tagged kind: calls are read whole at the end; other text streams."""
        if self.text:
            self.state = "whole" if self.text.startswith("<") else "plain"

    def _plain(self, deltas: list[dict]) -> None:
        if self.pos < len(self.text):
            deltas.append({"content": self.text[self.pos :]})
            self.pos = len(self.text)

    def _whole(self, deltas: list[dict]) -> None:
        return

    def _done(self, deltas: list[dict]) -> None:
        return
