"""``cli.py serve``: LitServe serving ``POST /predict`` (whole or streamed text), ``POST
/v1/chat/completions`` (OpenAI-compatible, with ``GET /v1/models``) and a page at ``GET /``. One
inference worker per route takes queued requests one at a time, each with its own generator; a bad
request gets a 400 answer before it is queued; a client that goes away leaves a stop mark the worker
reads between characters. Requests from other sites' web pages are refused (``foreign``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import litserve as ls
import torch
from litserve.specs.openai import ChatCompletionRequest
from starlette.responses import HTMLResponse, JSONResponse

from lightning_gpt.checkpoint_io import check_checkpoint, local_path
from lightning_gpt.config import GPTConfig
from lightning_gpt.errors import UserError
from lightning_gpt.generation import GenerationSettings, check_sampling, nth_seed, prepare_prompt, stream_text
from lightning_gpt.model import GPT
from lightning_gpt.tokenizer import CharTokenizer

MAX_PROMPT_CHARS = 10_000  # longer prompts are refused (the model sees only its context anyway)
MAX_NEW_TOKENS = 2_000  # the most characters one request may ask for
MAX_BODY_BYTES = 1_000_000
STREAM_EVERY_S = 0.02  # a streamed response sends the characters generated in each such interval
PREDICT, CHAT, MODELS = "/predict", "/v1/chat/completions", "/v1/models"
MODEL_ID = "lightning-gpt"  # the one model /v1/models lists (chat requests may name any)
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe listens on
# in a chat request's "metadata": its stop mark, seed and number of choices (LitServe's copies of it)
STOP_KEY, SEED_KEY, CHOICES_KEY = "lightning_gpt_stop", "lightning_gpt_seed", "lightning_gpt_choices"
MAX_CHOICES = 8  # the most choices (n) one chat request may ask for
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
FIELDS = dict(
    prompt=str, max_new_tokens=int, temperature=float, top_k=int, top_p=float, seed=int, stream=bool
)
KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def build_model(checkpoint: dict) -> tuple[GPT, CharTokenizer]:
    """The plain ``GPT`` (in eval mode) and tokenizer of a checkpoint, as ``GPTModule`` builds them from
    its hyperparameters; without Lightning, which each inference worker would otherwise import."""
    hparams = checkpoint["hyper_parameters"]
    model = GPT(GPTConfig.from_hparams(hparams, len(hparams["vocab"])))
    weights = checkpoint["state_dict"].items()
    model.load_state_dict({k.removeprefix("model."): w for k, w in weights if k.startswith("model.")})
    return model.eval(), CharTokenizer(hparams["vocab"])


def request_settings(body: object, tokenizer: CharTokenizer, chat: bool = False) -> dict:
    """The generation settings of a /predict (or, with ``chat``, a chat completion) request body;
    ValueError with a one-line reason for a bad one. A field that is absent or null takes its default."""
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    if not chat:
        return _settings(body, tokenizer, GenerationSettings())
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    contents = [m.get("content") if isinstance(m, dict) else None for m in messages]
    if not contents or not all(isinstance(content, str) for content in contents):
        raise ValueError('messages must be a non-empty list of {"role": ..., "content": "<text>"}')
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    n = 1 if body.get("n") is None else body["n"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise ValueError(f"n must be an integer from 1 to {MAX_CHOICES}, got {json.dumps(n)}")
    if n > 1 and body.get("stream"):  # LitServe's stream would carry the first choice only
        raise ValueError("n above 1 cannot be streamed; ask for one choice per stream")
    sampling = {name: body.get(name) for name in ("temperature", "top_p", "seed", "stream")}
    separator = next((c for c in "\n " if c in tokenizer.vocab), "")  # one the model knows, else none
    request = dict(prompt=separator.join(contents), max_new_tokens=body.get(field), **sampling)
    defaults = GenerationSettings(seed=None)  # as OpenAI's API: no seed, another continuation each call
    try:
        return _settings(request, tokenizer, defaults)
    except ValueError as error:  # named as the client named it
        raise ValueError(str(error).replace("max_new_tokens", field)) from None


def _settings(body: dict, tokenizer: CharTokenizer, defaults: GenerationSettings) -> dict:
    """The settings of a /predict body (a chat request's, renamed), checked; absent fields: ``defaults``."""
    if set(body) - set(FIELDS):
        raise ValueError(f"unknown fields {sorted(set(body) - set(FIELDS))}; the fields are {list(FIELDS)}")
    if not isinstance(body.get("prompt"), str):
        raise ValueError('the request needs a "prompt" string')
    settings = {"stream": False}
    for name, kind in FIELDS.items():
        value = body.get(name)
        if value is None:
            random = name == "seed" and name in body  # "seed": null asks for another text each time
            settings.setdefault(name, None if random else getattr(defaults, name, None))
            continue
        numeric = kind is float and isinstance(value, (int, float))
        if isinstance(value, bool) != (kind is bool) or not (isinstance(value, kind) or numeric):
            raise ValueError(f"{name} must be {KINDS[kind]}, got {json.dumps(value)}")
        if numeric and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        settings[name] = value
    if len(settings["prompt"]) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(settings['prompt'])} characters; at most {MAX_PROMPT_CHARS}")
    if settings["max_new_tokens"] > MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be <= {MAX_NEW_TOKENS}, got {settings['max_new_tokens']}")
    sampling = (settings[name] for name in ("temperature", "top_k", "top_p", "max_new_tokens"))
    check_sampling(*sampling, seed=settings["seed"])
    settings["prompt"] = prepare_prompt(settings["prompt"], tokenizer, hint="; remove them")  # a ValueError
    return settings


def foreign(headers: dict[bytes, bytes], loopback: bool) -> str | None:
    """Why a request sent by a web page of another site is refused, or None: a browser names that page's
    ``Origin`` (any page the user visits could otherwise make this server generate), and, on a loopback
    server, a ``Host`` that is not this machine's is a DNS-rebinding page's (which could read answers)."""
    host, origin = (headers.get(name, b"").decode("latin-1") for name in (b"host", b"origin"))
    try:
        hostname, origin_host = urlsplit(f"//{host}").hostname, urlsplit(origin).netloc
    except ValueError:  # an unclosed "[" of an IPv6 address
        return f"a malformed Host ({host}) or Origin ({origin}) header: refused"
    if loopback and host and hostname not in ("127.0.0.1", "localhost"):
        return f"Host {host} is not this machine: refused (open http://127.0.0.1 or http://localhost)"
    if origin and origin_host != host:  # "null" too: a file:// or sandboxed page
        return f"requests from pages of {origin} are refused; use the page this server serves at /"
    return None


class Gate:
    """ASGI middleware in front of LitServe's routes: refuses other sites' pages (``foreign``), serves
    the page, refuses a bad generation request with 400 before it is queued, and leaves a stop mark when
    the client goes away."""

    def __init__(self, app, vocab: str, stops: str, loopback: bool):
        self.app, self.tokenizer, self.stops, self.page = app, CharTokenizer(vocab), stops, PAGE.read_text()
        self.loopback = loopback

    async def __call__(self, scope, receive, send) -> None:
        route = (scope.get("method"), scope.get("path"))
        refusal = foreign(dict(scope["headers"]), self.loopback) if scope["type"] == "http" else None
        if refusal:
            return await JSONResponse({"error": {"message": refusal}}, status_code=403)(scope, receive, send)
        if scope["type"] == "http" and route == ("GET", "/"):
            return await HTMLResponse(self.page)(scope, receive, send)
        if scope["type"] == "http" and route == ("GET", MODELS):  # what OpenAI clients and UIs list first
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "lightning-gpt"}
            return await JSONResponse({"object": "list", "data": [model]})(scope, receive, send)
        if scope["type"] != "http" or route not in (("POST", PREDICT), ("POST", CHAT)):
            return await self.app(scope, receive, send)
        body, message = b"", {"more_body": True}
        while message.get("more_body") and len(body) <= MAX_BODY_BYTES:
            message = await receive()
            body += message.get("body", b"")
        try:
            if len(body) > MAX_BODY_BYTES:
                raise ValueError(f"the request body is over {MAX_BODY_BYTES} bytes")
            try:
                request = json.loads(body)
            except UnicodeDecodeError:
                raise ValueError("the request body is not UTF-8; send JSON in UTF-8") from None
            except (json.JSONDecodeError, RecursionError) as error:
                raise ValueError(f"the request body is not JSON ({error})") from None
            try:  # "\ud800" is valid JSON but no character: echoed (a chat's "model"), it failed with a 500
                json.dumps(request, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as error:
                lone = ascii(error.object[error.start])
                raise ValueError(
                    f"the request body holds {lone}, half of a surrogate pair; send whole characters"
                ) from None
            stream = request_settings(request, self.tokenizer, chat=route[1] == CHAT)["stream"]
        except ValueError as error:
            answer = JSONResponse({"error": {"message": str(error)}}, status_code=400)  # OpenAI's shape
            return await answer(scope, receive, send)
        stop = uuid.uuid4().hex
        if route[1] == CHAT:  # LitServe's chat request has no id and no seed field: both go in metadata
            # a null "n" or "model" (OpenAI's API allows it) is the default; LitServe failed on it
            request = {
                key: value for key, value in request.items() if value is not None or key not in ("n", "model")
            }
            given = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
            seed = {} if request.get("seed") is None else {SEED_KEY: str(request["seed"])}
            ours = {STOP_KEY: stop, CHOICES_KEY: str(request.get("n") or 1), **seed}
            request["metadata"] = {key: value for key, value in given.items() if key != SEED_KEY} | ours
        else:
            request["id"] = stop
        pending = [{"type": "http.request", "body": json.dumps(request).encode()}]
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        received: asyncio.Queue = asyncio.Queue()
        answered = False

        async def watch() -> None:  # listens for the client going away, even where LitServe does not
            message = {}
            while message.get("type") != "http.disconnect":
                message = await receive()
                await received.put(message)
            if not answered:  # the client went away (or stopped reading)
                Path(self.stops, stop).touch()

        async def replay() -> dict:
            if pending:
                return pending.pop()
            message = await received.get()
            if message["type"] == "http.disconnect":  # and again for any later call, as the server does
                received.put_nowait(message)
            return message

        async def typed(message: dict) -> None:  # LitServe's /predict stream has no content type
            nonlocal answered
            if route[1] == PREDICT and message["type"] == "http.response.start" and message["status"] == 200:
                kind = b"application/x-ndjson" if stream else b"application/json"
                message["headers"] = [*message.get("headers", []), (b"content-type", kind)]
            await send(message)
            answered = answered or (message["type"] == "http.response.body" and not message.get("more_body"))

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, replay, typed)
        finally:
            watcher.cancel()


class PredictAPI(ls.LitAPI):
    """``POST /predict``: ``{"text": ...}``, or such JSON lines with the new characters when streamed."""

    def __init__(self, checkpoint: str, stops: str, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint, self.stops = checkpoint, stops

    def setup(self, device: str) -> None:
        # a process group of its own: Ctrl-C (SIGINT to the terminal's whole group) or `kill -- -PGID` then
        # reaches the main process, whose shutdown stops this worker by its pid once the answers in flight
        # are sent. Signalled itself, a worker died mid-answer (its client hung) with a traceback; it cannot
        # ignore SIGTERM instead: that is how LitServe stops it. (Windows has no process groups.)
        if hasattr(os, "setpgid"):
            os.setpgid(0, 0)
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # else a write to the terminal would stop it
        checkpoint = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        model, self.tokenizer = build_model(checkpoint)
        self.model = model.to(device)

    def decode_request(self, request) -> tuple[dict, str, bool]:  # the JSON object, checked by Gate
        stop = request.pop("id")
        return request_settings(request, self.tokenizer), stop, True

    def predict(self, request: tuple[dict, str, bool]):
        """The text, whole or in pieces; ``request``: settings, stop mark, whether its last copy (the one
        that removes the mark)."""
        s, stop, last = request[0], Path(self.stops, request[1]), request[2]
        sampling = dict(temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], seed=s["seed"])
        text, sent, sent_at = [], 0, 0.0
        try:
            chars = stream_text(self.model, self.tokenizer, s["prompt"], s["max_new_tokens"], **sampling)
            for (char,) in chars:
                if stop.exists():
                    note = f"a request was stopped after {len(text)} of {s['max_new_tokens']} characters"
                    print(note, file=sys.stderr, flush=True)
                    if not s["stream"]:  # a whole answer: what LitServe's chat spec needs to finish it
                        yield "".join(text)
                    return
                text.append(char)
                # the first character at once, then what came in each STREAM_EVERY_S: one message per
                # character would cost the server more than generating it
                if s["stream"] and (sent == 0 or time.monotonic() - sent_at >= STREAM_EVERY_S):
                    yield "".join(text[sent:])
                    sent, sent_at = len(text), time.monotonic()
            if not s["stream"] or sent < len(text):
                yield "".join(text[sent:])
        finally:
            if last:
                stop.unlink(missing_ok=True)

    def encode_response(self, outputs):
        for text in outputs:
            yield {"text": text}


class ChatAPI(PredictAPI):
    """``POST /v1/chat/completions`` through LitServe's OpenAI spec: the messages' contents, joined by
    newlines, are the prompt; ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``n`` and ``stream``
    are honoured. LitServe queues a copy of the request per choice; this worker takes them in turn, and
    choice i samples with seed + i."""

    def setup(self, device: str) -> None:
        super().setup(device)
        self.choices_done: dict[str, int] = {}  # stop mark -> copies of that request taken so far

    def decode_request(self, request: ChatCompletionRequest) -> tuple[dict, str, bool]:
        body = request.model_dump(exclude_unset=True)
        metadata = body.pop("metadata")
        stop, choices, seed = metadata[STOP_KEY], int(metadata[CHOICES_KEY]), metadata.get(SEED_KEY)
        index = self.choices_done.pop(stop, 0)
        if index + 1 < choices:
            self.choices_done[stop] = index + 1
        body["seed"] = None if seed is None else nth_seed(int(seed), index)
        settings = request_settings(body, self.tokenizer, chat=True)
        settings["first"] = index == 0  # the copy whose usage counts the prompt: LitServe adds them up
        return settings, stop, index + 1 == choices

    def predict(self, request: tuple[dict, str, bool]):
        """The text as the spec's messages, with the usage counted in characters (one per token)."""
        prompt, made = len(request[0]["prompt"]) if request[0]["first"] else 0, 0
        for text in super().predict(request):
            made += len(text)  # so far: a stream's last message holds the whole count
            yield dict(content=text, prompt_tokens=prompt, completion_tokens=made, total_tokens=prompt + made)

    encode_response = ls.LitAPI.encode_response  # the spec's


def check_port(host: str, port: int) -> None:
    """UserError if a server cannot listen on ``host``:``port``, as uvicorn binds it: with SO_REUSEADDR
    where it means "despite connections closed lately" (POSIX), so that a server stopped a moment ago,
    which leaves its port in TIME_WAIT for a minute, can be started again."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        if os.name == "posix":  # on Windows it would let two servers share a port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = f"cannot listen on {host} port {port} ({error.strerror})"
            raise UserError(f"{reason}; pick another --port") from None


def serve(ckpt_path: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the checkpoint at ``http://host:port`` until Ctrl-C (or SIGTERM)."""
    ckpt_path = os.path.join("checkpoints", "last.ckpt") if ckpt_path == "last" else local_path(ckpt_path)
    if "://" in ckpt_path:  # the workers load the file itself
        raise UserError(
            f"serve reads a local checkpoint file: copy {ckpt_path} to this machine and pass its path"
        )
    if host not in HOSTS:
        raise UserError(f"--host must be one of {', '.join(HOSTS)} (127.0.0.1: this machine only): {host}")
    if not 1024 <= port <= 65535:  # LitServe's range (ports below 1024 need root)
        raise UserError(f"--port must be from 1024 to 65535, got {port}")
    checkpoint = check_checkpoint(Path(ckpt_path))  # shapes and weights checked
    if not all(w.isfinite().all() for w in checkpoint["state_dict"].values() if w.is_floating_point()):
        raise UserError(f"checkpoint {ckpt_path} has nan or inf weights: it was saved broken; serve another")
    vocab = checkpoint["hyper_parameters"]["vocab"]
    check_port(host, port)
    stops = tempfile.mkdtemp(prefix="lightning-gpt-serve-")
    try:
        apis = [
            PredictAPI(ckpt_path, stops, api_path=PREDICT, stream=True),
            ChatAPI(ckpt_path, stops, spec=ls.OpenAISpec()),
        ]
        middleware = (Gate, {"vocab": vocab, "stops": stops, "loopback": host == "127.0.0.1"})
        server = ls.LitServer(apis, accelerator="auto", devices=1, timeout=False, middlewares=[middleware])
        main_pid, stopping = os.getpid(), []

        def stop(signum, frame) -> None:
            """LitServe's clean shutdown, begun once by the main process (a repeat broke it off half-done).
            The processes it forks (the request queue's, the HTTP servers') inherit this handler and ignore
            the signal, as the shutdown stops them; unless the main process is gone (killed): they leave,
            and the workers, whose queue that was, follow."""
            if os.getpid() != main_pid and os.getppid() != main_pid:
                sys.exit(0)
            if os.getpid() == main_pid and not stopping:
                stopping.append(signum)
                raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {ckpt_path} at http://{shown}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
        server.run(host=host, port=port, generate_client_file=False, log_level="warning")
    finally:
        shutil.rmtree(stops, ignore_errors=True)


class OneLineParser(argparse.ArgumentParser):
    """A mistake in the arguments is one ``error:`` line, as in the other subcommands (not the usage)."""

    def error(self, message: str):
        raise UserError(f"{message} (options: cli.py serve --help)")


def main(argv: list[str]) -> None:
    """``cli.py serve ARGS``."""
    about = "Serve a checkpoint: a page at /, POST /predict, POST /v1/chat/completions (docs/serving.md)."
    parser = OneLineParser(prog="cli.py serve", description=about)
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="the checkpoint to serve: a .ckpt file (last: checkpoints/last.ckpt)",
    )
    parser.add_argument("--host", default="127.0.0.1", help=f"one of {', '.join(HOSTS)} (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="the port (default: 8000)")
    args = parser.parse_args(argv)
    serve(args.ckpt_path, args.host, args.port)
