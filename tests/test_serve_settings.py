"""serve's checks that need no server: request settings, other sites' pages, arguments and ports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CLI, run_command

from lightning_gpt.errors import UserError
from lightning_gpt.serve import (
    CHAT,
    CHOICES_KEY,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    SEED_KEY,
    STOP_KEY,
    Gate,
    check_port,
    foreign,
    request_settings,
)
from lightning_gpt.tokenizer import CharTokenizer


def ipv6_works() -> bool:
    """Whether this machine can listen on IPv6 at all (a container may have no IPv6 address)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_chat_messages_are_joined_by_a_character_the_model_knows():
    """A system and a user message were joined by a newline that a model trained without one refused (400:
    "remove them", though the client had sent none)."""
    messages = [{"role": "system", "content": "ab"}, {"role": "user", "content": "ba"}]
    for vocab, prompt in (("\n ab", "ab\nba"), (" ab", "ab ba"), ("ab", "abba")):
        assert request_settings({"messages": messages}, CharTokenizer(vocab), chat=True)["prompt"] == prompt


def test_request_limits_and_defaults():
    tokenizer = CharTokenizer("\n AB")
    at_limit = request_settings({"prompt": "A" * MAX_PROMPT_CHARS}, tokenizer)
    assert len(at_limit["prompt"]) == MAX_PROMPT_CHARS and at_limit["seed"] == 1337  # predict's default seed
    assert request_settings({"prompt": "A", "seed": None}, tokenizer)["seed"] is None  # null: another text
    most = request_settings({"prompt": "A", "max_new_tokens": MAX_NEW_TOKENS}, tokenizer)
    assert most["max_new_tokens"] == MAX_NEW_TOKENS
    chat = {"messages": [{"role": "user", "content": "A"}], "n": 8, "max_tokens": 10}
    assert request_settings(chat, tokenizer, chat=True)["max_new_tokens"] == 10
    both = {**chat, "max_completion_tokens": 20}  # the newer name wins, as in OpenAI's API
    assert request_settings(both, tokenizer, chat=True)["max_new_tokens"] == 20
    assert request_settings(chat, tokenizer, chat=True)["seed"] is None  # chat: OpenAI's default, no seed


def test_pages_of_other_origins_are_refused_even_on_this_machine():
    """A page on another local port (a dev server, Jupyter) is another site: it may not use the server."""
    host = b"127.0.0.1:8000"
    assert foreign({b"host": host, b"origin": b"http://127.0.0.1:8000"}, loopback=True) is None
    for origin in (b"http://127.0.0.1:3000", b"http://127.0.0.1", b"http://localhost:8000"):
        assert "refused" in foreign({b"host": host, b"origin": origin}, loopback=True), origin
    assert foreign({b"host": b"[::1]:8000"}, loopback=False) is None  # --host :: answers any name
    assert "not this machine" in foreign({b"host": b"192.168.1.5:8000"}, loopback=True)


def test_a_chat_request_cannot_set_the_servers_own_metadata(tmp_path: Path):
    """The stop mark names the file that stops a generation (removed when the request ends), and the count
    of choices gives each its seed: a client's metadata keeps its own keys, never the server's."""
    forwarded = []

    async def litserve(scope, receive, send) -> None:  # stands in for LitServe: keeps what reaches it
        forwarded.append(json.loads((await receive())["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def post(body: dict) -> dict:
        messages = [{"type": "http.request", "body": json.dumps(body).encode()}]

        async def receive() -> dict:  # the request, then a client that stays
            return messages.pop() if messages else await asyncio.Event().wait()

        async def send(message: dict) -> None:
            pass

        scope = {"type": "http", "method": "POST", "path": CHAT, "headers": [(b"host", b"127.0.0.1:8000")]}
        await Gate(litserve, "\n AB", str(tmp_path), loopback=True)(scope, receive, send)
        return forwarded[-1]["metadata"]

    planted = {STOP_KEY: "../../victim", CHOICES_KEY: "1", SEED_KEY: "9", "mine": "kept"}
    chat = {"messages": [{"role": "user", "content": "A"}], "n": 3, "metadata": planted}
    metadata = asyncio.run(post({**chat, "seed": 7}))
    assert re.fullmatch("[0-9a-f]{32}", metadata[STOP_KEY]), metadata
    assert (metadata[CHOICES_KEY], metadata[SEED_KEY], metadata["mine"]) == ("3", "7", "kept")
    assert SEED_KEY not in asyncio.run(post(chat))  # no seed given: another text each time
    assert list(tmp_path.iterdir()) == []  # answered: no stop mark left


def test_serve_refuses_bad_arguments_in_one_line(cli_main, tiny_checkpoint: Path, tmp_path: Path):
    missing = cli_main("serve", "--ckpt_path", str(tmp_path / "none.ckpt"), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: checkpoint")
    host = cli_main("serve", "--ckpt_path", str(tiny_checkpoint), "--host", "example.com", cwd=tmp_path)
    assert host.returncode == 2 and host.stderr.strip().startswith("error: --host must be one of 127.0.0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = cli_main("serve", "--ckpt_path", str(tiny_checkpoint), "--port", port, cwd=tmp_path)
        (tmp_path / "checkpoints").mkdir()
        shutil.copy(tiny_checkpoint, tmp_path / "checkpoints" / "last.ckpt")
        for given in ("last", f"file://{tmp_path}/checkpoints/last.ckpt"):  # as predict takes them
            found = cli_main("serve", "--ckpt_path", given, "--port", port, cwd=tmp_path)  # then refused
            assert f"error: cannot listen on 127.0.0.1 port {port}" in found.stderr, found.stderr
    assert busy.returncode == 2 and f"error: cannot listen on 127.0.0.1 port {port}" in busy.stderr
    url = cli_main("serve", "--ckpt_path", "s3://bucket/last.ckpt", cwd=tmp_path)
    copy = "copy s3://bucket/last.ckpt to this machine and pass its path"
    assert url.stderr == f"error: serve reads a local checkpoint file: {copy}\n"
    low = cli_main("serve", "--ckpt_path", str(tiny_checkpoint), "--port", "70000", cwd=tmp_path)
    assert low.returncode == 2 and low.stderr.strip() == "error: --port must be from 1024 to 65535, got 70000"
    root = cli_main("serve", "--ckpt_path", str(tiny_checkpoint), "--port", "1023", cwd=tmp_path)
    assert (
        root.returncode == 2 and root.stderr.strip() == "error: --port must be from 1024 to 65535, got 1023"
    )
    broken = torch.load(tiny_checkpoint, weights_only=True)
    next(iter(broken["state_dict"].values())).fill_(float("nan"))
    torch.save(broken, tmp_path / "broken.ckpt")
    nan = cli_main("serve", "--ckpt_path", str(tmp_path / "broken.ckpt"), cwd=tmp_path)
    assert nan.returncode == 2 and "has nan or inf weights" in nan.stderr.strip().splitlines()[-1]
    everything = missing.stderr + host.stderr + busy.stderr + low.stderr + nan.stderr
    assert "Traceback" not in everything and "Warning" not in everything, everything
    for args, message in [  # argparse printed its usage, then a line of its own
        (["--port", "abc"], "argument --port: invalid int value: 'abc'"),
        ([], "the following arguments are required: --ckpt_path"),
    ]:
        mistake = cli_main("serve", *args, cwd=tmp_path)
        assert (
            mistake.returncode == 2 and mistake.stderr == f"error: {message} (options: cli.py serve --help)\n"
        )


def test_a_port_that_a_stopped_server_left_in_time_wait_can_be_served_again():
    """A server stopped a moment ago leaves its closed connections in TIME_WAIT for a minute; uvicorn
    can listen there again, and the check before it must agree (it refused: "Address already in use")."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn listens
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: its end of the connection waits in TIME_WAIT
        client.close()
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1 port {port}"):
            check_port("127.0.0.1", port)  # while a server listens there, the port is busy
    time.sleep(0.1)
    check_port("127.0.0.1", port)
    if ipv6_works():
        check_port("::", port)  # --host :: binds an IPv6 socket (an IPv4 one refused every port)


def test_serve_starts_without_importing_lightning(tmp_path: Path):
    """serve needs LitServe, not Lightning, whose import was most of its start (benchmarks/README.md)."""
    command = [sys.executable, "-X", "importtime", str(CLI), "serve", "--ckpt_path", "none.ckpt"]
    result = run_command(command, cwd=tmp_path, timeout=120)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "litserve" in imported and "lightning_gpt.serve" in imported  # what -X importtime lists
    assert not [name for name in imported if name.split(".")[0] == "lightning"]
    assert result.returncode == 2 and result.stderr.splitlines()[-1].startswith("error: checkpoint none.ckpt")
