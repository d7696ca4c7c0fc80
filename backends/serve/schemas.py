"""The OpenAI request bodies the server accepts (pydantic; fields it does not use are
ignored, as OpenAI-compatible servers do, except those that ask for something this server
does not give: those are refused rather than silently left out), the errors it answers in
OpenAI's shape, and the response objects it sends."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)

from llmbuild.spec.data import CHAT_ROLES


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal[CHAT_ROLES]  # type: ignore[valid-type]
    content: str | list[TextPart] | None = None

    @model_validator(mode="after")
    def _has_content(self) -> Message:
        # Only an assistant's message may come without content (OpenAI's, when it holds
        # tool calls); a user's message of null would be answered as if it were empty.
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content (a string or text parts)")
        return self

    def as_template_input(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content or ""}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class Sampling(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")
    model: str
    # Numbers as JSON numbers, not strings that spell them (OpenAI's API refuses "5").
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: StrictFloat | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # 4 at most, as OpenAI
    seed: StrictInt | None = Field(None, ge=-(2**63), lt=2**64)  # what a torch seed holds
    n: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    echo: Any = None
    suffix: Any = None
    best_of: Any = None
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    top_k: Any = None  # vLLM's sampling extras, which clients send as extra_body
    min_p: Any = None
    repetition_penalty: Any = None

    def unsupported(self) -> str | None:
        """The first field set that asks for what this server does not give (a client
        asking for log probabilities, tools or a penalty must not get an answer made
        without them and go on as if it had them)."""
        for name in ("logprobs", "top_logprobs", "logit_bias", "echo", "suffix", "tools"):
            if getattr(self, name) not in (None, False, 0, {}, "", []):
                return name
        for name in ("functions", "frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0, []):
                return name
        if self.tool_choice not in (None, "none", "auto"):
            return "tool_choice"
        if self.function_call not in (None, "none", "auto"):
            return "function_call"
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        if self.best_of not in (None, 1):
            return "best_of"
        for name, off in (("top_k", (-1, 0)), ("min_p", (0,)), ("repetition_penalty", (1,))):
            if getattr(self, name) not in (None, *off):
                return name
        return None

    @property
    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return tuple(s for s in stops if s)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int]

    def unsupported(self) -> str | None:
        if self.logprobs is not None:  # a number: 0 asks for the chosen token's
            return "logprobs"
        return super().unsupported()


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


UNIONS = {
    "stop": "a string or an array of strings",
    "prompt": "a string, an array of strings or an array of token ids",
    "content": "a string or an array of text parts",
}
"""What the fields of several types take, as a refusal says it."""


def _union(errors: list[Any]) -> tuple[str, str] | None:
    """The field and what it takes, when ``errors`` are each of its types refusing it
    (pydantic locates them under the type's name: ``stop.str``, ``stop.list[str]``)."""
    first = errors[0]["loc"]
    for depth in range(len(first) - 1, 0, -1):
        field = first[depth - 1]
        if field in UNIONS and all(err["loc"][:depth] == first[:depth] for err in errors):
            return _param(first[:depth]), UNIONS[field]
    return None


def parse(raw: bytes, model: type[BaseModel]) -> Any:
    """The request body as ``model``, or the ``ApiError`` OpenAI would answer."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(
            400,
            "We could not parse the JSON body of your request: it is not valid JSON.",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise ApiError(
            400, "The JSON body of your request is nested too deeply.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    try:  # JSON's \ud800 escapes can make a string no tokenizer takes
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400,
            "The request body holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape "
            "without its pair): it is not text.",
            code="invalid_value",
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = _param(first["loc"])
        union = _union(e.errors())
        if union is not None:  # each of a field's types refused it: say what it takes
            param, wanted = union
            # unless one took its type and refused its value (a fifth stop string)
            valued = [err for err in e.errors() if not err["type"].endswith("_type")]
            if valued:
                said, code = valued[0]["msg"].removeprefix("Value error, "), "invalid_value"
            else:
                said, code = f"expected {wanted}", "invalid_type"
            raise ApiError(400, f"Invalid '{param}': {said}.", param=param, code=code) from None
        if first["type"] == "missing":
            raise ApiError(
                400, f"Missing required parameter: '{param}'.", param=param, code="missing"
            ) from None
        raise ApiError(
            400,
            f"Invalid '{param}': {first['msg'].removeprefix('Value error, ')}.",
            param=param,
            code="invalid_value",
        ) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(rid: str, obj: str, model: str) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model}
