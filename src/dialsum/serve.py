"""`dialsum serve`: a run or an export behind HTTP, for colleagues and for the `openai` client.

`POST /v1/summarize` takes a dialogue (`#PersonN#: ...` text, or a Korean_DCS conversation list) and builds exactly
the training prompt through `dialsum.predict.Predictor` (same topic policy, trimming, suppression and clean-up as
`dialsum predict`); `/v1/chat/completions` and `/v1/models` speak the OpenAI protocol (the last user message is the
dialogue); `GET /health`; `GET /` is a page to paste a dialogue into. Requests that arrive together (within
`batch_window_ms`) go through one `generate` call. A bad request is a 400/422 whose message names the field, never a
500. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dialsum.config import Config, token_budget
from dialsum.data import Dialogue, Turn, parse_turns
from dialsum.errors import ConfigError

__all__ = ["Server", "create_app", "load_server", "serve"]

ASSETS = Path(__file__).parent / "assets"
MAX_BATCH = 32  # dialogues in one /v1/summarize request
MAX_DIALOGUE_CHARS = 100_000  # refused before tokenizing


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, the field at fault, one sentence."""

    def __init__(self, field_name: str, message: str, status: int = 422):
        super().__init__(f"{field_name}: {message}")
        self.field, self.message, self.status = field_name, message, status


# ---------------------------------------------------------------- request bodies (unknown fields refused)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TurnIn(_Body):
    speaker: str
    utterance: str


class DialogueIn(_Body):
    id: str | None = Field(None, description="Echoed back.")
    dialogue: str | None = Field(None, description="'#Person1#: ...' lines, as in the competition CSV.")
    conversation: list[TurnIn] | None = Field(None, description="Korean_DCS turns: [{speaker, utterance}].")
    topic: str | list[str] | None = Field(None, description="The topic (a list is joined, as DCS keywords are).")
    subject_keyword: str | list[str] | None = Field(None, description="Korean_DCS's name for the topic.")


class SummarizeIn(DialogueIn):
    batch: list[DialogueIn] | None = Field(None, description="Several dialogues instead of one.")


class MessageIn(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]
    name: str | None = None


class ChatIn(_Body):
    model: str
    messages: list[MessageIn]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = 1
    stream: bool | None = False
    user: str | None = None


# ---------------------------------------------------------------- a request as a dialogue


def to_dialogue(item: DialogueIn, where: str = "") -> Dialogue:
    """The request's dialogue as dialsum reads a data row; a field that cannot make one is a RequestError."""
    given = [name for name in ("dialogue", "conversation") if getattr(item, name) is not None]
    if len(given) != 1:
        both = "give one of them, not both" if given else "one of them is required"
        raise RequestError(f"{where}dialogue", f"'dialogue' (text) or 'conversation' (turns): {both}")
    if item.topic is not None and item.subject_keyword is not None:
        raise RequestError(f"{where}subject_keyword", "and 'topic' name the same thing: give one of them")
    topic = item.topic if item.topic is not None else item.subject_keyword
    topic = ", ".join(t.strip() for t in topic if t.strip()) if isinstance(topic, list) else topic
    topic = (topic or "").strip() or None
    if item.dialogue is not None:
        name = f"{where}dialogue"
        if not item.dialogue.strip():
            raise RequestError(name, "is empty")
        if len(item.dialogue) > MAX_DIALOGUE_CHARS:
            raise RequestError(name, f"is {len(item.dialogue):,} characters; the limit is {MAX_DIALOGUE_CHARS:,}")
        preamble, turns = parse_turns(item.dialogue)
        if not turns:
            raise RequestError(name, "has no turns: each turn is a line starting with '#PersonN#:'")
        return Dialogue(id=item.id or "request", turns=turns, topic=topic, preamble=preamble)
    name = f"{where}conversation"
    if not item.conversation:
        raise RequestError(name, "has no turns")
    turns = [Turn(t.speaker.strip(), t.utterance.replace("\r\n", "\n").strip()) for t in item.conversation]
    if not any(t.utterance for t in turns):
        raise RequestError(name, "has no text in any utterance")
    if sum(len(t.utterance) for t in turns) > MAX_DIALOGUE_CHARS:
        raise RequestError(name, f"is longer than {MAX_DIALOGUE_CHARS:,} characters")
    return Dialogue(id=item.id or "request", turns=turns, topic=topic)


def _text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def chat_dialogue(request: ChatIn, config: Config) -> Dialogue:
    """The last user message is the dialogue: '#PersonN#:' lines, or a whole training prompt (its conversation
    block between the headers is taken; the prompt is rebuilt, so it is exactly the training one)."""
    users = [i for i, m in enumerate(request.messages) if m.role == "user"]
    if not users:
        raise RequestError("messages", "no message with role 'user' (it carries the dialogue)")
    where = f"messages[{users[-1]}].content"
    text = _text_of(request.messages[users[-1]].content)
    p = config.prompt
    topic = None
    if p.conversation_header in text and p.question_header in text:
        text, question = text.split(p.conversation_header, 1)[1].split(p.question_header, 1)
        pattern = re.escape(p.question).replace(re.escape("{topic}"), "(.+?)")
        found = re.search(pattern, question.strip())
        if found and found.groups() and found.group(1) != p.default_topic:
            topic = found.group(1)
    try:
        return to_dialogue(DialogueIn(dialogue=text, topic=topic))
    except RequestError as error:
        raise RequestError(where, error.message) from None


# ---------------------------------------------------------------- batching


@dataclass
class _Pending:
    dialogue: Dialogue
    limit: int | None
    future: asyncio.Future
    prompt_tokens: int = 0


@dataclass
class Server:
    """The loaded model and the batching queue; one worker thread generates, so the model is never shared."""

    predictor: Any
    name: str
    batch_window_ms: float = 10.0
    max_batch: int = MAX_BATCH
    queue: asyncio.Queue | None = None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    generate_calls: int = 0

    @property
    def config(self) -> Config:
        return self.predictor.config

    def prepare(self, dialogue: Dialogue, where: str) -> int:
        """The prompt's token count after trimming, or a RequestError when nothing of the dialogue would be left."""
        from dialsum.encode import encode_prompt_with_info

        limit = self.config.training.max_length
        try:
            ids, cut = encode_prompt_with_info(self.predictor.tokenizer, dialogue, self.config)
        except ConfigError:
            raise RequestError(where, f"is too long: even without its turns the prompt exceeds {limit} tokens")
        if cut >= len(dialogue.turns):
            raise RequestError(
                where, f"is too long: after trimming to training.max_length={limit} tokens no turn is left"
            )
        return len(ids)

    async def summarise(self, dialogues: list[Dialogue], limits: list[int | None], where: list[str]) -> list[dict]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._worker())
        loop = asyncio.get_running_loop()
        pending = []
        for dialogue, limit, name in zip(dialogues, limits, where):
            tokens = self.prepare(dialogue, name) if self.config.model.kind == "causal" else 0
            pending.append(_Pending(dialogue, limit, loop.create_future(), tokens))
        for item in pending:
            self.queue.put_nowait(item)
        return [await item.future for item in pending]

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            if self.batch_window_ms > 0:
                deadline = loop.time() + self.batch_window_ms / 1000
                size = self.config.generation.batch_size
                while len(batch) < size:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                    except asyncio.TimeoutError:
                        break
            try:
                results = await loop.run_in_executor(self.executor, self._generate, batch)
            except Exception as error:  # the model failed: every request of the batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)

    def _generate(self, batch: list[_Pending]) -> list[dict]:
        started = time.perf_counter()
        limits = None
        if any(item.limit is not None for item in batch):
            default = self._default_limits([item.dialogue for item in batch])
            limits = [min(item.limit or d, d) for item, d in zip(batch, default)]
        info: dict[str, Any] = {}
        summaries = self.predictor.summarise(
            [item.dialogue for item in batch], progress=False, info=info, max_new_tokens=limits
        )
        self.generate_calls += 1
        seconds = time.perf_counter() - started
        tokenizer = self.predictor.tokenizer
        cuts = info.get("cuts", [0] * len(batch))
        out = []
        for item, summary, cut in zip(batch, summaries, cuts):
            completion = len(tokenizer(summary, add_special_tokens=False)["input_ids"]) if summary else 0
            out.append(
                {
                    "summary": summary,
                    "tokens": {"prompt": item.prompt_tokens, "completion": completion},
                    "turns_cut": cut,
                    "batch_size": len(batch),
                    "generate_seconds": round(seconds, 4),
                }
            )
        return out

    def _default_limits(self, dialogues: list[Dialogue]) -> list[int]:
        g = self.config.generation
        if g.max_new_tokens == "auto":
            from dialsum.length import limits_for

            return limits_for(g, self.predictor.tokenizer, dialogues, self.config.data.train)
        return [token_budget(g)] * len(dialogues)


# ---------------------------------------------------------------- the app


def _error(status: int, message: str, param: str | None):
    from fastapi.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": None}}
    )


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


def create_app(server: Server):
    """The FastAPI app over a loaded Server."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="dialsum", version="1", docs_url="/docs", redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            reason = first.get("ctx", {}).get("error", first.get("msg"))
            return _error(400, f"malformed JSON in the request body: {reason}", "body")
        name = _field(tuple(first.get("loc", ())))
        if first.get("type") == "extra_forbidden":
            return _error(422, f"unknown field '{name}'", name)
        if first.get("type") == "missing":
            return _error(422, f"field '{name}' is required", name)
        return _error(422, f"field '{name}': {first.get('msg')}", name)

    @app.exception_handler(RequestError)
    async def _refused(request: Request, error: RequestError):
        return _error(error.status, f"field '{error.field}' {error.message}", error.field)

    @app.exception_handler(Exception)
    async def _failed(request: Request, error: Exception):  # a bug or the model failing: said, not hidden
        print(f"serve: {type(error).__name__}: {error}", file=sys.stderr)
        return _error(500, f"generation failed ({type(error).__name__}: {error})", None)

    @app.get("/health")
    async def health():
        import torch

        return {
            "status": "ok",
            "model": server.name,
            "backend": server.config.generation.backend,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "batch_window_ms": server.batch_window_ms,
            "max_batch": server.max_batch,
            "generate_calls": server.generate_calls,
        }

    @app.get("/", response_class=HTMLResponse)
    async def page():
        html = (ASSETS / "serve.html").read_text(encoding="utf-8")
        return html.replace("{{MODEL}}", server.name).replace("{{MAX}}", str(server.config.training.max_length))

    @app.post("/v1/summarize")
    async def summarize(body: SummarizeIn):
        started = time.perf_counter()
        if body.batch is not None:
            fields = ("dialogue", "conversation", "topic", "subject_keyword", "id")
            single = [n for n in fields if getattr(body, n) is not None]
            if single:
                raise RequestError(single[0], "cannot be given beside 'batch' (put it inside a batch item)")
            if not body.batch:
                raise RequestError("batch", "is empty")
            if len(body.batch) > server.max_batch:
                raise RequestError("batch", f"has {len(body.batch)} dialogues; the limit is {server.max_batch}")
            items, where = body.batch, [f"batch[{i}]." for i in range(len(body.batch))]
        else:
            items, where = [body], [""]
        dialogues = [to_dialogue(item, w) for item, w in zip(items, where)]
        names = [w + ("dialogue" if item.dialogue is not None else "conversation") for item, w in zip(items, where)]
        results = await server.summarise(dialogues, [None] * len(dialogues), names)
        seconds = round(time.perf_counter() - started, 4)
        for item, result in zip(items, results):
            result["id"] = item.id
            result["tokens"]["total"] = result["tokens"]["prompt"] + result["tokens"]["completion"]
        if body.batch is not None:
            return {"model": server.name, "results": results, "seconds": seconds}
        return {"model": server.name, **results[0], "seconds": seconds}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": server.name, "object": "model", "created": int(time.time()), "owned_by": "dialsum"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatIn):
        if body.model != server.name:
            raise RequestError("model", f"is {body.model!r}; this server serves {server.name!r} (GET /v1/models)", 404)
        if body.stream:
            raise RequestError("stream", "is not supported: summaries come whole", 400)
        if body.n not in (None, 1):
            raise RequestError("n", "must be 1: greedy decoding has one answer", 400)
        g = server.config.generation
        if body.temperature not in (None, 0) and not g.do_sample:
            raise RequestError(
                "temperature", "must be 0 or omitted: this model decodes greedily as it was evaluated", 400
            )
        if body.top_p not in (None, 1) and not g.do_sample:
            raise RequestError("top_p", "must be 1 or omitted: this model decodes greedily as it was evaluated", 400)
        dialogue = chat_dialogue(body, server.config)
        limit = body.max_completion_tokens or body.max_tokens
        users = [i for i, m in enumerate(body.messages) if m.role == "user"]
        result = (await server.summarise([dialogue], [limit], [f"messages[{users[-1]}].content"]))[0]
        prompt, completion = result["tokens"]["prompt"], result["tokens"]["completion"]
        cap = min(limit or 10**9, *server._default_limits([dialogue]))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": server.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result["summary"]},
                    "finish_reason": "length" if completion >= cap else "stop",
                }
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

    return app


# ---------------------------------------------------------------- the command


def load_server(model_path: str | Path, batch_window_ms: float = 10.0, max_batch: int = MAX_BATCH) -> Server:
    from dialsum.predict import Predictor

    predictor = Predictor.from_path(model_path)
    name = Path(model_path).resolve().name
    return Server(predictor, name, batch_window_ms=batch_window_ms, max_batch=max_batch)


def serve(
    model_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "hf",
    batch_window_ms: float = 10.0,
    max_batch: int = MAX_BATCH,
) -> None:
    """Load once, then serve until Ctrl-C."""
    import uvicorn

    if backend not in ("hf", "vllm"):
        raise ConfigError(f"--backend {backend}: choose hf or vllm")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: not a TCP port")
    if backend == "vllm":
        from dialsum.vllm_serve import vllm_server

        predictor, process = vllm_server(model_path, port + 1)
        server = Server(predictor, predictor.name, batch_window_ms=batch_window_ms, max_batch=max_batch)
    else:
        server, process = load_server(model_path, batch_window_ms, max_batch), None
    print(f"serving {server.name} on http://{host}:{port}/ (OpenAI API at http://{host}:{port}/v1)", file=sys.stderr)
    try:
        uvicorn.run(create_app(server), host=host, port=port, log_level="warning")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
