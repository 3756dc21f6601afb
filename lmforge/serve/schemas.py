"""What clients send (OpenAI's request bodies, validated strictly) and how errors go back to them."""

from __future__ import annotations

from dataclasses import fields
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from lmforge.generation.config import MAX_SEED, GenerationConfig


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kinds = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}
        kind = kinds.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _OpenAISampling(_Strict):
    """OpenAI's parameters shared by both routes."""

    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


# lmforge's own options a request may add (the `server` options of GenerationConfig), checked
# as GenerationConfig checks them.
SERVER_EXTRAS = [f for f in fields(GenerationConfig) if f.metadata.get("server")]
SamplingRequest = create_model(
    "SamplingRequest",
    __base__=_OpenAISampling,
    __doc__="Parameters shared by both routes: OpenAI's, and lmforge's own extras.",
    **{f.name: (f.type, None) for f in SERVER_EXTRAS},
)


# Fields real clients send that change nothing here (bookkeeping, or settings of features this
# server does not have that leave the output as it is): dropped. Fields asking for something it
# cannot do: a 400 `unsupported_parameter` naming them. Any other unknown field: a 400.
IGNORED_FIELDS = (
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "reasoning_effort",
)
UNSUPPORTED_FIELDS = {
    "audio": "audio output",
    "modalities": "output modalities other than text",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "functions": "the deprecated `functions` (use `tools`)",
    "function_call": "the deprecated `function_call` (use `tool_choice`)",
    "verbosity": "verbosity settings",
}


class JSONSchemaFormat(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    response_format: ResponseFormat | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: None = None  # clients echo an assistant message back with these set to null
    function_call: None = None
    annotations: list | None = None


class Function(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: Function


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate: bool = False  # lmforge's own: cut inputs longer than the context instead of a 400


class Settings(BaseModel):
    """Server limits."""

    model_id: str
    api_key: str | None = None
    max_tokens: int = 2048  # per request
    max_n: int = 8
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 300.0
    max_batch: int = 8  # rows generated together
    max_queue: int = 64
    cache_len: int = 2048  # KV cache slots per row (at most the model's context)
