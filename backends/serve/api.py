"""The OpenAI-compatible HTTP API over an engine (FastAPI): ``POST /v1/chat/completions``
and ``POST /v1/completions``, whole or streamed as server-sent events ending in
``data: [DONE]``; ``GET /v1/models``; ``GET /health`` (open, with the engine's counts).
With an API key, every ``/v1`` route wants ``Authorization: Bearer KEY``. Errors are
answered in OpenAI's shape and status: 400 for a body that is not JSON or not a valid
request (OpenAI answers schema errors with 400, not 422), 401 for a key, 404 for a model
or route."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from llmbuild.backends.serve.engine import Engine
from llmbuild.backends.serve.model import PromptError
from llmbuild.backends.serve.schemas import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Sampling,
    envelope,
    new_id,
    parse,
    usage,
)
from llmbuild.backends.serve.sequence import Event, SamplingParams
from starlette.exceptions import HTTPException

COMPLETION_DEFAULT_TOKENS = 16
"""OpenAI's default ``max_tokens`` for completions (chat answers may fill the context)."""


@dataclass(frozen=True)
class Job:
    """A validated request, ready for the engine."""

    chat: bool
    ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


class _Stream(EventSourceResponse):
    """Server-sent events whose generator is closed however the response ends, so a
    client that goes away frees its engine row at once."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def _event(data: Any) -> bytes:
    return format_sse_event(data_str=data if isinstance(data, str) else json.dumps(data))


async def _cancel_on_disconnect(request: Request, seq: Any) -> None:
    """Frees the engine row of a whole answer whose client hangs up before it is done
    (the body is read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    seq.cancel()


class Api:
    def __init__(self, engine: Engine, api_key: str | None = None) -> None:
        self.engine, self.served, self.api_key = engine, engine.served, api_key

    async def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "You didn't provide an API key: send it as `Authorization: Bearer KEY`.",
            )
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _check_model(self, name: str) -> None:
        if name not in (self.served.name, *self.served.aliases):
            raise ApiError(
                404,
                f"The model '{name}' does not exist (this server serves '{self.served.name}').",
                param="model",
                code="model_not_found",
            )

    def _job(self, body: Sampling, chat: bool, ids: list[int], max_tokens: int | None) -> Job:
        if body.n not in (None, 1):
            raise ApiError(400, "Only n=1 is supported.", param="n", code="invalid_value")
        if (name := body.unsupported()) is not None:
            raise ApiError(
                400,
                f"'{name}' is not supported by this server: send the request without it.",
                param=name,
                code="unsupported_parameter",
            )
        where = "messages" if chat else "prompt"
        if len(ids) >= self.served.context:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.served.context} tokens; your "
                f"{where} resulted in {len(ids)} tokens, leaving no room for an answer.",
                param=where,
                code="context_length_exceeded",
            )
        room = self.served.context - len(ids)
        params = SamplingParams(
            max_tokens=min(max_tokens or room, room),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=body.stops + (self.served.turn_texts if chat else ()),
        )
        return Job(chat, ids, params, bool(body.stream), body.include_usage)

    def chat_job(self, raw: bytes) -> Job:
        body: ChatRequest = parse(raw, ChatRequest)
        self._check_model(body.model)
        try:
            ids = self.served.chat_ids([m.as_template_input() for m in body.messages])
        except PromptError as e:
            raise ApiError(400, str(e), param="messages") from None
        return self._job(body, True, ids, body.max_completion_tokens or body.max_tokens)

    def completion_job(self, raw: bytes) -> Job:
        body: CompletionRequest = parse(raw, CompletionRequest)
        self._check_model(body.model)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ApiError(400, "Send one prompt per request.", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.served.prompt_ids(prompt)
        else:
            vocab = int(self.served.model.config.vocab_size)
            if not prompt:  # as vLLM says it; an empty text starts from the first token
                raise ApiError(
                    400, "The prompt cannot be an empty list of token ids.", param="prompt"
                )
            if not all(0 <= i < vocab for i in prompt):
                raise ApiError(400, f"Token ids must be in [0, {vocab}).", param="prompt")
            ids = list(prompt)
        return self._job(body, False, ids, body.max_tokens or COMPLETION_DEFAULT_TOKENS)

    def _submit(self, job: Job) -> tuple[Any, asyncio.Queue[Event]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        seq = self.engine.submit(
            job.ids, job.params, lambda e: loop.call_soon_threadsafe(queue.put_nowait, e)
        )
        return seq, queue

    def _choice(self, job: Job, text: str | None, finish: str | None, whole: bool) -> dict:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if not job.chat:
            choice["text"] = text or ""
        elif whole:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["delta"] = {} if text is None else {"content": text}
        return choice

    async def answer(self, job: Job, request: Request) -> dict[str, Any]:
        seq, queue = self._submit(job)
        watch = asyncio.create_task(_cancel_on_disconnect(request, seq))
        text = []
        try:
            while (event := await queue.get()).finish_reason is None:
                text.append(event.text)
        finally:
            watch.cancel()
            seq.cancel()  # nothing to stop once it has finished
        if event.error is not None:
            raise ApiError(500, event.error, type="server_error")
        reason = "stop" if event.finish_reason == "cancelled" else event.finish_reason
        out = envelope(
            new_id("chatcmpl" if job.chat else "cmpl"),
            "chat.completion" if job.chat else "text_completion",
            self.served.name,
        )
        out["choices"] = [self._choice(job, "".join(text) + event.text, reason, whole=True)]
        out["usage"] = usage(event.prompt_tokens, event.completion_tokens)
        return out

    async def stream(self, job: Job) -> AsyncIterator[bytes]:
        seq, queue = self._submit(job)
        head = envelope(
            new_id("chatcmpl" if job.chat else "cmpl"),
            "chat.completion.chunk" if job.chat else "text_completion",
            self.served.name,
        )
        try:
            if job.chat:
                first = self._choice(job, "", None, whole=False)
                first["delta"]["role"] = "assistant"
                yield _event({**head, "choices": [first]})
            while True:
                event = await queue.get()
                if event.error is not None:
                    yield _event(ApiError(500, event.error, type="server_error").body())
                    break
                if event.text:
                    yield _event({**head, "choices": [self._choice(job, event.text, None, False)]})
                if event.finish_reason is not None:
                    last = self._choice(job, None, event.finish_reason, whole=False)
                    yield _event({**head, "choices": [last]})
                    if job.include_usage:
                        tokens = usage(event.prompt_tokens, event.completion_tokens)
                        yield _event({**head, "choices": [], "usage": tokens})
                    break
            yield _event("[DONE]")
        finally:
            seq.cancel()


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def create_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    api = Api(engine, api_key)
    app = FastAPI(title=f"llmbuild serve: {engine.served.name}", docs_url=None, redoc_url=None)
    authorized = [Depends(api.authorize)]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(ApiError(e.status_code, str(e.detail)))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.served.name, **engine.status()}

    def _model() -> dict[str, Any]:
        return {"id": engine.served.name, "object": "model", "created": 0, "owned_by": "llmbuild"}

    @app.get("/v1/models", dependencies=authorized)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model()]}

    @app.get("/v1/models/{name:path}", dependencies=authorized)
    async def model(name: str) -> dict[str, Any]:
        api._check_model(name)
        return _model()

    async def _respond(job: Job, request: Request) -> Any:
        if job.stream:
            return _Stream(api.stream(job))
        return await api.answer(job, request)

    # A request's JSON, chat template and tokens are made in a thread: a long prompt
    # (megabytes of it) keeps the server answering others while it is read.
    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat(request: Request) -> Any:
        job = await asyncio.to_thread(api.chat_job, await request.body())
        return await _respond(job, request)

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(request: Request) -> Any:
        job = await asyncio.to_thread(api.completion_job, await request.body())
        return await _respond(job, request)

    return app
