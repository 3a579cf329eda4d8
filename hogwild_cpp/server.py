"""An OpenAI-compatible HTTP server where one request is a run of W collaborating workers.

    app = create_app(Hogwild("model.gguf", workers=2), api_key=None, max_queue=8)
    Server(app).run(sockets=[listen("127.0.0.1", 8080)])      # or: hogwild serve model.gguf

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (streaming or not), `GET /v1/models`,
`GET /health`. A request's problem is its last user message (chat) or its prompt (completions),
and a chat's system messages are its system prompt (else the server's); the response's content is
the run's answer. Per-request settings go in an extra `hogwild` object
(workers, layout, max_steps, names, check_every, finisher_tokens) and the usual sampling fields
(temperature, top_p, seed, and llama.cpp's top_k, min_p); the rest comes from the server's defaults.
The response's `hogwild` object holds every worker's text, the stop reason, who wrote the answer
and timings; a stream sends each worker's tokens in it as they come, then the answer as content.

llama.cpp contexts are not thread-safe: one thread runs every run, one at a time. Requests wait in
a queue of `max_queue` places (a full queue answers 503 with Retry-After); a client that goes away
stops its run within a step, which frees its context (and so its KV cells).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import Run
from .engine import DoneEvent, Engine, Progress, StepEvent, TokenEvent
from .errors import BadInput, HogwildError
from .settings import Settings

__all__ = ["create_app", "listen", "Server", "Scheduler", "ChatRequest", "CompletionRequest", "HogwildOptions"]

log = logging.getLogger("hogwild_cpp.server")

POLL_S = 0.25           # how often a waiting request checks that its client is still there
KEEPALIVE_S = 10.0      # an SSE comment when a stream has had nothing to send for this long
SEED_MAX = 2**32 - 1 - 64   # worker w samples with seed + w (a uint32 in llama.cpp)


# --- requests ----------------------------------------------------------------------------------

class _Strict(BaseModel):
    # strict: "2" is not a number and 1.0 is not an integer (a float field takes an integer)
    model_config = ConfigDict(strict=True, extra="allow")


class HogwildOptions(_Strict):
    """The request's `hogwild` object: settings of this run (unset: the server's)."""
    model_config = ConfigDict(strict=True, extra="forbid")
    workers: int | None = Field(None, ge=1, le=64)
    layout: str | None = None
    max_steps: int | None = Field(None, ge=1, le=1_000_000)
    names: list[str] | None = None
    check_every: int | None = Field(None, ge=0)
    finisher_tokens: int | None = Field(None, ge=0, le=4096)


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _Common(_Strict):
    """Fields both endpoints take. Other OpenAI fields (stop, logprobs, penalties, ...) are ignored."""
    model: str | None = None            # ignored: the server has one model
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)  # the budget in steps (tokens a worker) without hogwild.max_steps
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)       # llama.cpp's extra sampling fields
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    n: int | None = Field(None, ge=1, le=1)     # one choice: a run has one answer
    hogwild: HogwildOptions | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Common):
    prompt: str | list[str]


def _problem_of_chat(req: ChatRequest) -> str:
    """The last user message. Earlier turns are not passed on: the engine writes its own prompt (the
    collaboration rules) around the problem."""
    for m in reversed(req.messages):
        if m.role == "user":
            text = m.text()
            if not text.strip():
                raise _Refusal(400, "the last user message is empty", param="messages")
            return text
    raise _Refusal(400, "no user message: the last user message is the problem", param="messages")


def _system_of_chat(req: ChatRequest) -> str | None:
    """The request's system messages ("developer" is OpenAI's newer name), joined: the run's system prompt
    in place of the server's -sys, as llama.cpp's server uses the request's. None without one."""
    texts = [m.text().strip() for m in req.messages if m.role in ("system", "developer")]
    return "\n\n".join(t for t in texts if t) or None


def _problem_of_completion(req: CompletionRequest) -> str:
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise _Refusal(400, f"one prompt per request, got {len(prompt)}", param="prompt")
        prompt = prompt[0]
    if not prompt.strip():
        raise _Refusal(400, "the prompt is empty", param="prompt")
    return prompt


def _settings_for(defaults: Settings, req: _Common, max_tokens: int | None, system: str | None = None) -> Settings:
    """The server's settings with the request's changes (`system`: its system prompt); BadInput if they
    cannot work."""
    h = req.hogwild or HogwildOptions()
    fields = {f.name for f in dataclasses.fields(Settings)}
    changes: dict[str, Any] = {} if system is None else {"system_prompt": system}
    for key in ("workers", "layout", "names", "check_every", "finisher_tokens"):
        value = getattr(h, key)
        if value is not None:
            if key not in fields:
                raise _Refusal(400, f"hogwild.{key} is not supported by this version", param=f"hogwild.{key}")
            changes[key] = value
    if h.max_steps is not None:
        changes["max_steps"] = h.max_steps
    elif max_tokens is not None:
        changes["max_steps"] = max_tokens
    for ours, theirs in (("temp", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
                         ("seed", "seed")):
        value = getattr(req, theirs)
        if value is not None:
            changes[ours] = value
    if "workers" in changes and "names" not in changes and defaults.names is not None \
            and len(defaults.names) != changes["workers"]:
        changes["names"] = None  # the server's names were for another number of workers
    if changes.get("names"):
        changes["names"] = [n.strip() for n in changes["names"]]
    settings = dataclasses.replace(defaults, **changes)
    settings.check()
    return settings


# --- errors --------------------------------------------------------------------------------------

class _Refusal(Exception):
    """A request answered with an error in OpenAI's format."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class _ClientGone(Exception):
    pass


class _KeyCheck:
    """ASGI middleware: /v1/* needs `Authorization: Bearer KEY`, checked before the body is read."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.key):
                refusal = _Refusal(401, "wrong API key" if header else
                                   "an API key is required: send 'Authorization: Bearer KEY'",
                                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'cannot parse it')})", None
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = e.get("msg", "invalid value")
    if not param and e.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "the body must be a JSON object", None
    if e.get("type") == "missing":
        msg = "this field is required" if param else "a JSON object is required"
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{param}: {msg}" if param else msg) + extra, param


# --- the queue and the engine thread -------------------------------------------------------------

class _Job:
    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Settings, problem: str):
        self.loop, self.settings, self.problem = loop, settings, problem
        # ("event", ev) | ("done", (result, extra)) | ("error", exc) | ("cancelled", None)
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.created = time.perf_counter()
        self.started: float | None = None
        self.names: list[str] = []     # the workers' names, set before the run's first event
        self.ended = False             # its result or error was handed to the client

    def cancel(self) -> None:
        self.cancelled.set()

    def post(self, kind: str, value: Any = None) -> None:
        """From the engine thread: hand an item to the request's task."""
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening
            pass


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        self.retry_after = retry_after


class ShuttingDown(Exception):
    pass


class Scheduler:
    """Runs jobs one at a time on one thread (llama.cpp contexts are not thread-safe); at most
    `max_queue` wait while one runs."""

    def __init__(self, model, max_queue: int):
        self.model, self.max_queue = model, max_queue
        self.pending: deque[_Job] = deque()    # waiting, in order of arrival
        self.wakeup: asyncio.Event | None = None
        self.running: _Job | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.task: asyncio.Task | None = None
        self.avg_run_s = 1.0
        self.closing = False
        self.stats = {"served": 0, "cancelled": 0, "refused": 0, "failed": 0}

    async def start(self) -> None:
        self.wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hogwild-engine")
        self.task = asyncio.create_task(self._dispatch())

    def close(self) -> None:
        """Take no more requests; cancel what runs and what waits (their clients get a clean end)."""
        self.closing = True
        if self.running is not None:
            self.running.cancel()
        for job in self.pending:
            job.cancel()
        self._drop_abandoned()

    async def stop(self) -> None:
        """Cancel what waits and what runs; wait for the engine thread to let go of its context."""
        if self.task is None:
            return
        self.task.cancel()
        if self.running is not None:
            self.running.cancel()
        while self.pending:
            job = self.pending.popleft()
            job.cancel()
            job.post("cancelled")
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
        self.task = None

    def _drop_abandoned(self) -> None:
        """Jobs whose clients went away while they waited leave the queue."""
        if any(j.cancelled.is_set() for j in self.pending):
            kept = deque()
            for job in self.pending:
                if job.cancelled.is_set():
                    self.stats["cancelled"] += 1
                    job.post("cancelled")  # to a request that still waits for it: shutting down
                else:
                    kept.append(job)
            self.pending = kept

    @property
    def waiting(self) -> int:
        self._drop_abandoned()
        return len(self.pending)

    def submit(self, settings: Settings, problem: str) -> _Job:
        if self.closing or self.task is None:
            raise ShuttingDown()
        admitted = self.waiting + (self.running is not None)
        if admitted >= 1 + self.max_queue:
            self.stats["refused"] += 1
            raise QueueFull(max(1, math.ceil(self.avg_run_s * max(admitted, 1))))
        job = _Job(asyncio.get_running_loop(), settings, problem)
        self.pending.append(job)
        self.wakeup.set()
        return job

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            job = self.pending.popleft()
            self.running = job
            try:
                await loop.run_in_executor(self.executor, self._execute, job)
            except asyncio.CancelledError:
                job.cancel()
                raise
            finally:
                self.running = None

    def _execute(self, job: _Job) -> None:
        """On the engine thread: the run, its events handed over one by one."""
        job.started = time.perf_counter()
        run = events = None
        try:
            run = Run(Engine(self.model, job.settings), job.problem)
            job.names = list(run.names)
            events = run.events()
            for ev in events:
                if job.cancelled.is_set():
                    self.stats["cancelled"] += 1
                    job.post("cancelled")
                    return
                if isinstance(ev, DoneEvent):
                    r = ev.result
                    finisher_tokens = len(self.model.tokenize(r.finisher)) if r.finisher else 0
                    job.post("done", (r, {"finisher_tokens": finisher_tokens,
                                          "run_s": time.perf_counter() - job.started}))
                    self.stats["served"] += 1
                    return
                job.post("event", ev)
            raise RuntimeError("the engine stopped without a result")
        except HogwildError as exc:
            self.stats["failed"] += 1
            job.post("error", exc)
        except Exception as exc:  # a bug: say so in the log, and to the client
            log.exception("the run failed")
            self.stats["failed"] += 1
            job.post("error", exc)
        finally:
            if events is not None:
                events.close()   # the engine closes its context: its cells are free
            if run is not None:
                run.close()
            ran = time.perf_counter() - job.started
            self.avg_run_s = 0.7 * self.avg_run_s + 0.3 * ran


class _Watch:
    """A request's view of its job's items that notices, every POLL_S, a client gone away (the job is
    then cancelled and _ClientGone raised), however fast the items come."""

    def __init__(self, job: _Job, request: Request | None):
        self.job, self.request, self.checked = job, request, time.monotonic()

    async def _check(self) -> None:
        self.checked = time.monotonic()
        if self.request is not None and await self.request.is_disconnected():
            self.job.cancel()
            raise _ClientGone()

    async def next(self, timeout: float | None = None):
        """The next item; None after `timeout` seconds without one."""
        t0 = time.monotonic()
        if t0 - self.checked >= POLL_S:
            await self._check()
        getter = asyncio.ensure_future(self.job.items.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=POLL_S)
                if done:
                    return getter.result()
                await self._check()
                if timeout is not None and time.monotonic() - t0 >= timeout:
                    return None
        finally:
            if not getter.done():
                getter.cancel()


# --- responses -----------------------------------------------------------------------------------

def _answer_source(result) -> str | None:
    """Who wrote the answer: a worker, or the finisher at the budget (None: no answer)."""
    source = getattr(result, "answer_source", None)
    if source is not None or hasattr(result, "answer_source"):
        return source
    if result.answer is None:
        return None
    return "finisher" if result.finisher else "worker"


def _content(result) -> str:
    """The answer; without one, what the finisher wrote (an answer it could not close), else ""."""
    if result.answer is not None:
        return result.answer
    return result.finisher.strip() if result.finisher else ""


def _finish_reason(result) -> str:
    return "length" if result.reason in ("budget", "ctx_full") and result.answer is None else "stop"


def _usage(result, extra: dict) -> dict:
    completion = sum(result.generated.values()) + extra.get("finisher_tokens", 0)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
            "total_tokens": result.prompt_tokens + completion}


def _settings_summary(s: Settings, names: list[str]) -> dict:
    return {"workers": s.workers, "layout": s.layout, "max_steps": s.max_steps, "names": names,
            "temperature": s.temp, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p, "seed": s.seed}


def _summary(job: _Job, result, extra: dict) -> dict:
    """The response's `hogwild` object."""
    started = job.started or job.created
    n_gen = sum(result.generated.values())
    return {
        "workers": result.texts,
        "reason": result.reason,
        "answer": result.answer,
        "answer_source": _answer_source(result),
        "answer_worker": getattr(result, "answer_worker", None),
        "finisher": result.finisher,
        "steps": result.steps,
        "generated": result.generated,
        "settings": _settings_summary(job.settings, job.names),
        "timings": {
            "queued_s": round(started - job.created, 4),
            "prompt_s": round(result.prompt_s, 4),
            "generate_s": round(result.generate_s, 4),
            "run_s": round(extra.get("run_s", 0.0), 4),
            "total_s": round(time.perf_counter() - job.created, 4),
            "prompt_tokens_per_s": round(result.prompt_tokens / max(result.prompt_s, 1e-9), 1),
            "generated_tokens_per_s": round(n_gen / max(result.generate_s, 1e-9), 1),
        },
    }


class _RunStream(StreamingResponse):
    """An SSE stream of a run; however the response ends (a client gone before the first chunk
    included), a run that did not hand over its end is cancelled."""

    def __init__(self, job: _Job, content):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.job.ended:
                self.job.cancel()


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _run_error(exc: BaseException) -> _Refusal:
    if isinstance(exc, BadInput):
        return _Refusal(400, str(exc))
    if isinstance(exc, HogwildError):
        return _Refusal(500, str(exc), code="run_failed")
    return _Refusal(500, f"internal error ({type(exc).__name__}); see the server's log", code="internal_error")


# --- the app -------------------------------------------------------------------------------------

def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket for `uvicorn.Server.run(sockets=[...])` (port 0: any free one).

    Its protocol is IPPROTO_TCP so that asyncio sets TCP_NODELAY on the connections it accepts
    (it checks the protocol; `socket.create_server` leaves it 0): without it, a response's headers
    and body went out as two segments and the body waited ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


class Server(uvicorn.Server):
    """uvicorn's server for an app of create_app: told to stop (Ctrl-C, SIGTERM, should_exit), it
    first cancels the runs, so that every client gets a clean end (a stream its error event and
    [DONE], a waiting request 503) within a decode step, instead of uvicorn's graceful timeout."""

    def __init__(self, app, **config):
        super().__init__(uvicorn.Config(app, **config))
        self.app = app

    async def shutdown(self, sockets=None):
        self.app.state.scheduler.close()
        await super().shutdown(sockets=sockets)


def create_app(hogwild, defaults: Settings | None = None, *, model_id: str | None = None,
               api_key: str | None = None, max_queue: int = 8) -> FastAPI:
    """The ASGI app serving `hogwild` (a loaded `Hogwild`): its model, with `defaults` (its settings
    when None) for what a request does not set. `api_key`: required as `Authorization: Bearer KEY`
    on /v1/*. `max_queue`: how many requests may wait while one runs."""
    if max_queue < 0:
        raise ValueError("max_queue must be 0 or more")
    defaults = defaults if defaults is not None else hogwild.settings
    defaults.check()
    model = hogwild.model
    model_id = model_id or Path(model.path).name
    try:
        model_created = int(Path(model.path).stat().st_mtime)
    except OSError:
        model_created = int(time.time())
    scheduler = Scheduler(model, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        await scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()

    app = FastAPI(title="hogwild serve", version=_version(), lifespan=lifespan,
                  description="OpenAI-compatible: one request is a run of collaborating workers.")
    app.state.scheduler = scheduler

    @app.exception_handler(_Refusal)
    async def _refusal(request, exc: _Refusal):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return _Refusal(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        code = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _Refusal(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None)).response()

    if api_key is not None:
        app.add_middleware(_KeyCheck, api_key=api_key)

    @app.get("/health")
    async def health():
        """Public (no key): the server is up; what runs and waits; counts since start."""
        return {"status": "ok", "model": model_id, "running": scheduler.running is not None,
                "waiting": scheduler.waiting, "max_queue": scheduler.max_queue, **scheduler.stats}

    @app.get("/v1/models")
    async def models():
        s = defaults
        return {"object": "list", "data": [{
            "id": model_id, "object": "model", "created": model_created, "owned_by": "hogwild_cpp",
            "hogwild": {"workers": s.workers, "layout": s.layout, "max_steps": s.max_steps}}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        problem = _problem_of_chat(body)
        return await _serve(request, body, problem, body.max_completion_tokens or body.max_tokens, chat=True,
                             system=_system_of_chat(body))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        problem = _problem_of_completion(body)
        return await _serve(request, body, problem, body.max_tokens, chat=False)

    async def _serve(request: Request, body: _Common, problem: str, max_tokens: int | None, chat: bool,
                     system: str | None = None):
        try:
            settings = _settings_for(defaults, body, max_tokens, system)
        except BadInput as exc:
            raise _Refusal(400, str(exc), param="hogwild")
        try:
            job = scheduler.submit(settings, problem)
        except QueueFull as full:
            raise _Refusal(503, f"the server is busy: {scheduler.max_queue} requests already wait; retry later",
                           type="server_error", code="queue_full", headers={"Retry-After": str(full.retry_after)})
        except ShuttingDown:
            raise _Refusal(503, "the server is shutting down", code="shutting_down")
        meta = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()),
                "model": model_id}
        handed_over = False
        watch = _Watch(job, request)
        try:
            first = await watch.next()   # an event, or the reason there will be none
            kind, value = first
            if kind == "error":
                raise _run_error(value)
            if kind == "cancelled":
                raise _Refusal(503, "the server is shutting down", type="server_error", code="shutting_down")
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                handed_over = True
                return _RunStream(job, _stream(job, first, meta, chat, include_usage))
            item = first
            while item[0] == "event":
                item = await watch.next()
            kind, value = item
            if kind == "error":
                raise _run_error(value)
            if kind == "cancelled":
                raise _Refusal(503, "the server is shutting down", type="server_error", code="shutting_down")
            result, extra = value
            job.ended = True
            return _complete_response(job, result, extra, meta, chat)
        except _ClientGone:
            return Response(status_code=499)   # nobody reads it
        finally:
            if not handed_over and not job.ended:
                job.cancel()

    def _complete_response(job, result, extra, meta, chat) -> dict:
        content, finish = _content(result), _finish_reason(result)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
        return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                "usage": _usage(result, extra), "hogwild": _summary(job, result, extra)}

    async def _stream(job: _Job, first, meta: dict, chat: bool, include_usage: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict | None = None, text: str = "", finish=None, hogwild=None) -> dict:
            choice = {"index": 0, "delta": delta or {}} if chat else {"index": 0, "text": text}
            choice.update(logprobs=None, finish_reason=finish)
            out = {**meta, "object": obj, "choices": [choice]}
            if hogwild is not None:
                out["hogwild"] = hogwild
            return out

        watch = _Watch(job, None)  # Starlette ends the stream when its client goes
        try:
            if chat:
                yield _sse(chunk({"role": "assistant", "content": ""},
                                 hogwild={"settings": _settings_summary(job.settings, job.names)}))
            batch = [first]
            while True:
                # everything the engine has handed over so far goes out as one chunk
                while not job.items.empty():
                    batch.append(job.items.get_nowait())
                delta: dict[str, str] = {}
                steps, progress, end = [], None, None
                for kind, value in batch:
                    if kind != "event":
                        end = (kind, value)
                        break
                    if isinstance(value, TokenEvent):
                        delta[value.worker] = delta.get(value.worker, "") + value.text
                    elif isinstance(value, StepEvent):
                        steps.append({"worker": value.worker, "step": value.step, "text": value.text})
                    elif isinstance(value, Progress):
                        progress = {"done": value.done, "total": value.total}
                h = {k: v for k, v in (("delta", delta), ("steps", steps), ("prompt", progress)) if v}
                if h:
                    yield _sse(chunk(hogwild=h))
                if end is not None:
                    kind, value = end
                    if kind == "done":
                        result, extra = value
                        job.ended = True
                        content = _content(result)
                        if content:
                            yield _sse(chunk({"content": content}, text=content))
                        yield _sse(chunk(finish=_finish_reason(result), hogwild=_summary(job, result, extra)))
                        if include_usage:
                            yield _sse({**meta, "object": obj, "choices": [], "usage": _usage(result, extra)})
                    else:
                        err = _run_error(value) if kind == "error" else \
                            _Refusal(503, "the server is shutting down", code="shutting_down")
                        job.ended = True
                        yield _sse(err.body())
                    yield b"data: [DONE]\n\n"
                    return
                item = await watch.next(timeout=KEEPALIVE_S)
                if item is None:
                    yield b": keep-alive\n\n"
                    batch = []
                else:
                    batch = [item]
        finally:
            if not job.ended:
                job.cancel()   # the client went away: the run stops within a step

    return app


def _version() -> str:
    from . import __version__
    return __version__
