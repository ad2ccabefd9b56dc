"""Streaming speed of ``cli.py serve`` with the seed-size model, against ``predict``'s generation.

    python benchmarks/serve_speed.py [--new 500] [--repeats 3]

An untrained seed-shape checkpoint (random weights: speed does not depend on them) is written to a
temporary folder and a real ``cli.py serve`` started on it. Each repeat times ``generation.stream_text``
(the loop ``predict`` runs) in this process, one streamed /predict request from an HTTP client on
127.0.0.1, ``stream_text`` again, 4 concurrent streamed requests (served one after another from the
queue), and ``stream_text`` once more; each served rate is compared with the mean of the in-process
rates around it, so that a shared machine's drift cancels out. Time to the first character is from
sending the request; characters per second are over the whole request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe  # noqa: E402

from lightning_gpt import GPT, CharTokenizer, preset  # noqa: E402
from lightning_gpt.generation import stream_text  # noqa: E402

PROMPT = "First Citizen"
VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def seed_checkpoint(path: Path) -> GPT:
    """Save an untrained seed-shape checkpoint as ``fit`` would (hyperparameters + ``model.`` weights)."""
    torch.manual_seed(0)
    config = preset("seed", vocab_size=len(VOCAB))
    model = GPT(config).eval()
    hparams = {name: getattr(config, name) for name in config.__dataclass_fields__ if name != "vocab_size"}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {**hparams, "vocab": VOCAB}, "state_dict": state}, path)
    return model


def stream(url: str, new: int, seed: int) -> tuple[float, float]:
    """One streamed request: (seconds to the first character, characters per second overall)."""
    body = {"prompt": PROMPT, "max_new_tokens": new, "seed": seed, "stream": True}
    start = time.perf_counter()
    first, chars, pending = None, 0, b""
    with requests.post(f"{url}/predict", json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for data in response.iter_content(chunk_size=None):  # as the chunks arrive
            *lines, pending = (pending + data).split(b"\n")
            chars += sum(len(json.loads(line)["text"]) for line in lines)
            if first is None and chars:
                first = time.perf_counter() - start
    assert chars == new, chars
    return first, new / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=500, help="characters per request")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "seed.ckpt"
        model = seed_checkpoint(checkpoint)
        tokenizer = CharTokenizer(VOCAB)
        print(
            f"seed-size model, random weights ({model.num_parameters():,} parameters), {args.new} characters"
        )

        def predict_rate(seed: int) -> float:
            start = time.perf_counter()
            for _ in stream_text(model, tokenizer, PROMPT, args.new, temperature=0.8, seed=seed):
                pass
            return args.new / (time.perf_counter() - start)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [
            sys.executable,
            str(ROOT / "cli.py"),
            "serve",
            "--ckpt_path",
            str(checkpoint),
            "--port",
            str(port),
        ]
        server = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.perf_counter()
            while True:
                try:
                    if requests.get(f"{url}/health", timeout=5).text == "ok":
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.2)
            print(f"server ready {time.perf_counter() - started:.1f} s after its start")
            stream(url, 20, 0)  # warm-up
            firsts, ratios, ratios4 = [], [], []
            for repeat in range(args.repeats):
                # predict's loop in this process before and after each served run: a busy machine's
                # drift over those seconds cancels out of the ratio
                before = predict_rate(repeat)
                first, rate = stream(url, args.new, repeat)
                after = predict_rate(repeat)
                with ThreadPoolExecutor(4) as pool:
                    start = time.perf_counter()
                    results = list(pool.map(lambda seed: stream(url, args.new, seed), range(4)))
                    total = 4 * args.new / (time.perf_counter() - start)
                again = predict_rate(repeat)
                predict = (before + after) / 2
                firsts.append(first)
                ratios.append(rate / predict)
                ratios4.append(total / ((after + again) / 2))
                fours = ", ".join(f"{t * 1000:.0f}" for t in sorted(t for t, _ in results))
                print(
                    f"repeat {repeat + 1}: predict {before:.1f} / {after:.1f} / {again:.1f} chars/s; "
                    f"1 client: first character {first * 1000:.0f} ms, {rate:.1f} chars/s "
                    f"({100 * ratios[-1]:.0f}%); 4 clients: first characters {fours} ms, "
                    f"{total:.1f} chars/s in all ({100 * ratios4[-1]:.0f}%)",
                    flush=True,
                )
            print(
                f"medians: first character (1 client) {statistics.median(firsts) * 1000:.0f} ms; streamed "
                f"chars/s vs predict's: 1 client {100 * statistics.median(ratios):.0f}%, "
                f"4 clients {100 * statistics.median(ratios4):.0f}%"
            )
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
