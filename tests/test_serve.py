"""``cli.py serve``: one real server (a subprocess) on 127.0.0.1, shared by the module's tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest
import requests
import torch
from conftest import CLI

from lightning_gpt.config import GPTConfig
from lightning_gpt.generation import stream_text
from lightning_gpt.model import GPT
from lightning_gpt.serve import (
    MAX_BODY_BYTES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    build_model,
)

START_TIMEOUT = 180  # seconds: three Python processes import torch on a possibly busy 2-core machine
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(checkpoint: Path, log: Path):
    """``cli.py serve`` on a free port, its stderr in ``log``: yields (process, base URL) once it answers.
    Its session is its own, so ``os.killpg(process.pid, SIGINT)`` is a terminal's Ctrl-C."""
    port = free_port()
    command = [sys.executable, str(CLI), "serve", "--ckpt_path", str(checkpoint), "--port", str(port)]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process, url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory):
    """The module's server: yields (base URL, path of its stderr); stopped with SIGTERM."""
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with serving(tiny_checkpoint, log) as (process, url):
        yield url, log
        process.send_signal(signal.SIGTERM)  # to the main process, as `kill PID` does
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def slow_checkpoint(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    """A checkpoint of the seed's shape but 12 blocks, with random weights, over the tiny checkpoint's
    vocabulary, for the tests that need an answer still under way: 2,000 characters take seconds, where a
    fast machine made the tiny model's before a browser had read the first ones (or a signal had come)."""
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    shape = {key: value for key, value in asdict(GPTConfig(num_blocks=12)).items() if key != "vocab_size"}
    hparams = checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], **shape}
    model = GPT(GPTConfig.from_hparams(hparams, len(hparams["vocab"])))
    checkpoint["state_dict"] = {f"model.{key}": value for key, value in model.state_dict().items()}
    path = tmp_path_factory.mktemp("slow") / "slow.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def slow_server(slow_checkpoint: Path):
    """The module's server of ``slow_checkpoint``: yields (base URL, path of its stderr). Then its main
    process is killed (kill -9, the OOM killer) and its process group gets SIGTERM: every process ends
    (before, the request queue's process ignored it and kept the inference workers and their memory)."""
    log = slow_checkpoint.with_name("stderr.txt")
    with serving(slow_checkpoint, log) as (process, url):
        yield url, log
        children = children_of(process.pid)
        process.kill()
        process.wait()
        os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while running(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children) >= 4 and not running(children)


def stops(log: Path) -> list[str]:
    """The server's "a request was stopped after N of M characters" lines so far."""
    return [line for line in log.read_text().splitlines() if "a request was stopped" in line]


def new_stops(log: Path, before: int, count: int) -> list[str]:
    """The stop lines after the first ``before``, once there are ``count`` of them (or after 30 s)."""
    deadline = time.monotonic() + 30
    while len(stops(log)) < before + count and time.monotonic() < deadline:
        time.sleep(0.1)
    return stops(log)[before:]


def _ready(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):  # not listening yet, or too busy to answer
        return requests.get(f"{url}/health", timeout=5).text == "ok"
    return False


@pytest.fixture(scope="module")
def expected(tiny_checkpoint: Path):
    """The text that generation.stream_text (what `predict` runs) gives for the same settings."""
    model, tokenizer = build_model(torch.load(tiny_checkpoint, map_location="cpu", weights_only=True))

    def text(prompt: str, max_new_tokens: int, **sampling) -> str:
        return "".join(c for (c,) in stream_text(model, tokenizer, prompt, max_new_tokens, **sampling))

    return text


def predict(url: str, **body) -> str:
    """The text of one request, whole or streamed (then JSON lines of new characters, the first alone)."""
    response = requests.post(f"{url}/predict", json=body, stream=True, timeout=60)
    assert response.status_code == 200, response.text
    if not body.get("stream"):
        assert response.headers["content-type"] == "application/json"
        return response.json()["text"]
    assert response.headers["content-type"] == "application/x-ndjson"
    pieces = [json.loads(line)["text"] for line in response.iter_lines()]
    assert all(pieces) and len(pieces[0]) == 1  # the first character at once
    return "".join(pieces)


def test_predict_whole_and_streamed_match_generation(server, expected):
    url, _ = server
    settings = dict(max_new_tokens=60, temperature=0.9, top_k=20, top_p=0.95, seed=7)
    whole = predict(url, prompt="ROMEO:", **settings)
    assert whole == predict(url, prompt="ROMEO:", stream=True, **settings)  # the same seed, the same text
    assert whole == expected("ROMEO:", **settings)
    assert whole != predict(url, prompt="ROMEO:", **{**settings, "seed": 8})
    # "seed": null asks for another text each time (it gave the default seed's text)
    randoms = {predict(url, prompt="ROMEO:", **{**settings, "seed": None}) for _ in range(3)}
    assert len(randoms) == 3 and whole not in randoms
    assert len(predict(url, prompt="")) == 500  # every field but the prompt has predict's default


def test_four_concurrent_clients_get_their_own_text(server, expected):
    url, _ = server
    requests_ = [dict(prompt=p, max_new_tokens=150, seed=i, stream=True) for i, p in enumerate("ABCD")]
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda body: predict(url, **body), requests_))
    assert texts == [expected(r["prompt"], 150, seed=r["seed"], temperature=0.8) for r in requests_]


def test_openai_client_whole_and_streamed(server, expected):
    openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")
    client = openai.OpenAI(base_url=f"{server[0]}/v1", api_key="not-needed")
    assert [model.id for model in client.models.list()] == ["lightning-gpt"]  # was a 404
    messages = [{"role": "system", "content": "ROMEO:"}, {"role": "user", "content": "JULIET:"}]
    greedy = expected("ROMEO:\nJULIET:", 40, temperature=0)
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0)
    assert answer.choices[0].message.content == greedy
    usage = (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens)
    assert usage == (14, 40, 54)  # characters (before: all 0)
    # a tiny top_p leaves only the most likely character: greedy even at a high temperature
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=40, temperature=1.5, top_p=1e-6, stream=True
        )
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == greedy
    assert chunks[-1].usage.completion_tokens == 40
    # n choices with a seed: choice i samples with seed + i (before: n copies of one text)
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, seed=11, n=3)
    texts = [expected("ROMEO:\nJULIET:", 20, temperature=0.8, seed=seed) for seed in (11, 12, 13)]
    assert [choice.message.content for choice in answer.choices] == texts and len(set(texts)) == 3
    usage = (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens)
    assert usage == (14, 60, 74)  # the prompt once (before: once per choice)
    # the last seed's next choice wraps to 0, as predict's seed + index does
    answer = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=20, seed=2**63 - 1, n=2
    )
    texts = [expected("ROMEO:\nJULIET:", 20, temperature=0.8, seed=seed) for seed in (2**63 - 1, 0)]
    assert [choice.message.content for choice in answer.choices] == texts
    # null n and model, which OpenAI's API allows, are the defaults (before: a 500)
    body = {"model": None, "n": None, "messages": messages, "max_tokens": 3}
    answer = requests.post(f"{server[0]}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["choices"][0]["message"]["content"]) == 3
    assert answer.headers["content-type"] == "application/json"  # one type: /predict's is added alone
    streamed = requests.post(f"{server[0]}/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "," not in streamed.headers["content-type"]
    page = requests.get(f"{server[0]}/", timeout=30)  # the page, without a browser
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # a seed gives predict's text for the same settings (before, chat requests dropped it)
    settings = dict(max_tokens=40, temperature=1.2, seed=11)
    seeded = [client.chat.completions.create(model="tiny", messages=messages, **settings) for _ in "12"]
    sampled = expected("ROMEO:\nJULIET:", 40, temperature=1.2, seed=11)
    assert [answer.choices[0].message.content for answer in seeded] == [sampled, sampled]
    with pytest.raises(openai.BadRequestError, match="seed must be in"):
        client.chat.completions.create(model="tiny", messages=messages, seed=-1)
    forged = {"lightning_gpt_seed": "abc"}  # the key that carries the seed: a client's own is dropped
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, metadata=forged)
    assert len(answer.choices[0].message.content) == 5
    with pytest.raises(openai.BadRequestError, match="top_p must be in"):
        client.chat.completions.create(model="tiny", messages=messages, top_p=1.5)


BAD_PREDICT = [
    (b"{not json", "the request body is not JSON (Expecting property name"),
    (b'["ROMEO:"]', "must be a JSON object"),
    (b'{"prompt": "' + b"A" * MAX_BODY_BYTES + b'"}', f"the request body is over {MAX_BODY_BYTES} bytes"),
    ({"max_new_tokens": 5}, 'needs a "prompt" string'),
    ({"prompt": 5}, 'needs a "prompt" string'),
    ({"prompt": "A", "lenght": 5}, "unknown fields ['lenght']"),
    ({"prompt": "caf\u00e9 \u20ac"}, "not in the model's vocabulary: '\u00e9', '\u20ac'"),
    ({"prompt": "A", "temperature": -1}, "temperature must be a finite number >= 0"),
    ({"prompt": "A", "top_k": 0}, "top_k must be >= 1"),
    ({"prompt": "A", "top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"prompt": "A", "max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"prompt": "A", "max_new_tokens": "ten"}, 'max_new_tokens must be an integer, got "ten"'),
    ({"prompt": "A", "max_new_tokens": 2.5}, "max_new_tokens must be an integer"),
    ({"prompt": "A", "stream": "yes"}, "stream must be true or false"),
    ({"prompt": "A", "top_k": True}, "top_k must be an integer, got true"),
    ({"prompt": "A", "temperature": "hot"}, "temperature must be a number"),
    (b'{"prompt": "A", "temperature": NaN}', "temperature must be a finite number"),
    ({"prompt": "A", "seed": -1}, "seed must be in [0, 2**63)"),
    (b'{"prompt": "A\xff"}', "the request body is not UTF-8; send JSON in UTF-8"),
    (b"[" * 100_000, "the request body is not JSON (maximum recursion depth exceeded"),  # was a 500
    ({"prompt": "A" * (MAX_PROMPT_CHARS + 1)}, f"at most {MAX_PROMPT_CHARS}"),
    ({"prompt": "A", "max_new_tokens": MAX_NEW_TOKENS + 1}, f"max_new_tokens must be <= {MAX_NEW_TOKENS}"),
]
BAD_CHAT = [
    ({"model": "x"}, "messages must be a non-empty list"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "A"}]}]}, "messages must be"),
    ({"messages": [{"role": "user", "content": "A"}], "max_tokens": MAX_NEW_TOKENS + 1}, "max_tokens must"),
    ({"messages": [{"role": "user", "content": "A"}], "max_completion_tokens": 0}, "max_completion_tokens "),
    ({"messages": [{"role": "user", "content": "A"}], "temperature": -2}, "temperature must be a finite"),
    ({"messages": [{"role": "user", "content": "A"}], "n": 9}, "n must be an integer from 1 to 8, got 9"),
    (
        {"messages": [{"role": "user", "content": "A"}], "n": True},
        "n must be an integer from 1 to 8, got true",
    ),
    (
        {"messages": [{"role": "user", "content": "A"}], "n": 2, "stream": True},
        "n above 1 cannot be streamed",
    ),
    ({"messages": [{"role": "user", "content": "\u00e9"}], "stream": True}, "not in the model's vocabulary"),
    (  # echoed in the answer, where it could not be encoded: a 500
        {"model": "\ud800", "messages": [{"role": "user", "content": "A"}]},
        "the request body holds '\\ud800', half of a surrogate pair; send whole characters",
    ),
]


def test_bad_requests_get_one_message_and_the_server_keeps_serving(server):
    url, _ = server
    cases = [("/predict", *case) for case in BAD_PREDICT] + [("/v1/chat/completions", *c) for c in BAD_CHAT]
    for path, body, message in cases:
        sent = {"data": body} if isinstance(body, bytes) else {"json": body}
        response = requests.post(f"{url}{path}", **sent, timeout=30)
        assert response.status_code == 400, (body, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": {"message": response.json()["error"]["message"]}}
        assert message in response.json()["error"]["message"], (body, response.text)
    assert predict(url, prompt="A", max_new_tokens=3, stream=True)


def test_other_sites_pages_are_refused(server):
    """Before, any web page the user visited could make the server generate (a browser's cross-site POST
    of text/plain needs no preflight), and a DNS-rebinding page could read the answers."""
    url, _ = server
    port = url.rsplit(":", 1)[1]
    body = json.dumps({"prompt": "A", "max_new_tokens": 3})  # sent as text/plain, as a form can
    refused = [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Host": f"evil.example:{port}"}]
    refused += [{"Host": "[::1"}, {"Origin": "http://[oops"}]  # malformed: a 500 and a traceback before
    for headers in refused:
        for method, path in (("POST", "/predict"), ("POST", "/v1/chat/completions"), ("GET", "/")):
            answer = requests.request(method, f"{url}{path}", data=body, headers=headers, timeout=30)
            assert answer.status_code == 403, (headers, path, answer.text)
            assert "refused" in answer.json()["error"]["message"]
    for headers in ({"Origin": url}, {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}):
        assert requests.post(f"{url}/predict", data=body, headers=headers, timeout=30).status_code == 200


def test_a_stopped_stream_frees_its_work(slow_server):
    url, log = slow_server
    before = len(stops(log))
    body = {"prompt": "A", "max_new_tokens": MAX_NEW_TOKENS, "stream": True}
    with requests.post(f"{url}/predict", json=body, stream=True, timeout=30) as response:
        lines = response.iter_lines()
        assert [json.loads(next(lines)) for _ in range(3)]
    stopped = new_stops(log, before, 1)
    assert stopped and int(stopped[-1].split()[5]) < MAX_NEW_TOKENS, log.read_text()[-2000:]
    assert predict(url, prompt="A", max_new_tokens=3)


def test_a_client_that_leaves_a_whole_chat_answer_frees_its_work(slow_server):
    """LitServe does not listen for a disconnect while a non-streamed chat answer is made: before, the
    worker made all of it, and the requests queued behind it waited; and with n choices, the first one
    removed the stop mark that the others were to read."""
    url, log = slow_server
    before = len(stops(log))
    body = {
        "model": "x",
        "messages": [{"role": "user", "content": "A"}],
        "max_tokens": MAX_NEW_TOKENS,
        "n": 3,
    }
    with pytest.raises(requests.Timeout):
        requests.post(f"{url}/v1/chat/completions", json=body, timeout=0.5)
    stopped = new_stops(log, before, 3)
    assert len(stopped) == 3, log.read_text()[-2000:]
    assert all(int(line.split()[5]) < MAX_NEW_TOKENS for line in stopped), stopped
    assert predict(url, prompt="A", max_new_tokens=3)
    assert "Error in non-streaming response" not in log.read_text()  # LitServe's, for an answer with no text


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pids: list[int]) -> list[int]:
    """Those of the processes that have not exited (a zombie has: it only waits to be reaped)."""
    states = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            states[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return [pid for pid, state in states.items() if state != "Z"]


def test_ctrl_c_finishes_the_stream_in_flight_and_stops_every_process(slow_checkpoint: Path, tmp_path: Path):
    """Ctrl-C signals the terminal's whole process group. Before, the inference workers took the SIGINT
    too: KeyboardInterrupt tracebacks, and the stream in flight hung until its client gave up; a second
    signal during the shutdown could leave processes running."""
    log = tmp_path / "stderr.txt"
    with serving(slow_checkpoint, log) as (process, url):
        children = children_of(process.pid)
        # under way at the signal (one character sent: the tiny model's would be done by then on a fast
        # machine), and short: a busy machine streams it slowly
        body = {"prompt": "A", "max_new_tokens": 500, "stream": True}
        with requests.post(f"{url}/predict", json=body, stream=True, timeout=(5, 25)) as response:
            lines = response.iter_lines()
            text = json.loads(next(lines))["text"]
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
            signalled = time.monotonic()
            text += json.loads(next(lines))["text"]
            process.send_signal(signal.SIGTERM)  # and a `kill PID` while it stops: ignored
            text += "".join(json.loads(line)["text"] for line in lines)  # a hang: "Read timed out" at 25 s
        waited = time.monotonic() - signalled
        assert len(text) == 500 and waited < 25, (len(text), waited)  # the answer was finished, not cut
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while running(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children) >= 4 and not running(children), children  # workers, HTTP servers, queue's
    assert "Traceback" not in log.read_text() and "KeyboardInterrupt" not in log.read_text(), log.read_text()


def test_listens_on_loopback_only(server):
    port = int(server[0].rsplit(":", 1)[1])
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    assert f"0100007F:{port:04X}" in listening  # 127.0.0.1, little-endian hex
    assert not [a for a in listening if a.endswith(f":{port:04X}") and not a.startswith("0100007F")]


def test_page_streams_and_stops_in_a_browser(slow_server):
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is in the dev extra")
    if CHROMIUM is None:
        pytest.skip("no chromium to drive (Debian: apt-get install chromium; .ci/run installs it)")
    url, log = slow_server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 520})
        page.goto(url + "/")
        # slow the download (2 kB/s) so that the stream is still coming in at Stop
        network = page.context.new_cdp_session(page)
        network.send("Network.enable")
        conditions = {"offline": False, "latency": 0, "downloadThroughput": 2000, "uploadThroughput": -1}
        network.send("Network.emulateNetworkConditions", conditions)
        page.fill("#prompt", "JULIET:")
        page.fill("#length", str(MAX_NEW_TOKENS))
        page.fill("#temperature", "")  # an empty box is the server's default (it sent 0: greedy)
        with page.expect_request("**/predict") as request:
            page.click("#generate")
        sent = request.value.post_data_json
        assert sent["max_new_tokens"] == MAX_NEW_TOKENS and "temperature" not in sent and "top_k" not in sent
        page.wait_for_function("document.getElementById('output').textContent.length > 'JULIET:'.length + 20")
        assert page.text_content("#status") == "generating…"
        if os.environ.get("SERVE_SCREENSHOT"):  # docs/serve_page.png (docs/serving.md)
            page.screenshot(path=os.environ["SERVE_SCREENSHOT"])
        before = len(stops(log))
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        text = page.text_content("#output")
        assert text.startswith("JULIET:") and len(text) < len("JULIET:") + MAX_NEW_TOKENS
        assert page.is_enabled("#generate") and not page.is_enabled("#stop")
        browser.close()
    # the server stopped too (and logged it before the next test reads its log)
    assert len(new_stops(log, before, 1)) == 1, log.read_text()[-2000:]
