"""``predict --generate.interactive true``: prompts from stdin, continuations streamed, Ctrl-C and Ctrl-D."""

import io
import os
import pty
import sys

import pytest
import torch
from conftest import Events

from lightning_gpt.generation import GenerationSettings
from lightning_gpt.interactive import interactive_session
from lightning_gpt.module import GPTModule


def test_interactive_mode_with_piped_stdin(bare_dir, cli_main, monkeypatch):
    # \xff: not UTF-8 (a traceback that ended the session: stdin's strict decoder, or later \udcff).
    # Lines of a Windows file (\r\n), read as Python reads stdin on Linux (newline="\n": the \r stays).
    lines = io.BytesIO(b"ROMEO: \r\nAB\xff\r\nJULIET:\r\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(lines, "utf-8", newline="\n"))
    result = cli_main(
        "predict",
        "--ckpt_path=model.ckpt",
        "--generate.interactive=true",
        "--generate.max_new_tokens=15",
        "--generate.output=samples.txt",
        "--generate.num_samples=2",
        f"--generate.seed={2**63 - 1}",  # answer 1: seed 0 (out of range, it ended the session)
        cwd=bare_dir,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "note: interactive mode reads prompts from stdin and prints one sample each; ignoring "
        "--generate.num_samples, --generate.output"
    ) in result.stderr
    assert not (bare_dir / "samples.txt").exists() and "Type a prompt" not in result.stderr  # for a terminal
    # each answer: the prompt (its last space kept), the whole continuation and a newline
    assert result.stdout.startswith("ROMEO: ") and "\nJULIET:" in result.stdout
    assert len(result.stdout) == len("ROMEO: ") + 15 + 1 + len("JULIET:") + 15 + 1
    assert "error: prompt characters not in the model's vocabulary: '\\udcff'" in result.stderr
    # the second answer (the refused line is none) samples with seed + 1 = 0, as predict's second prompt
    alone = cli_main(
        "predict",
        "--ckpt_path=model.ckpt",
        "--generate.max_new_tokens=15",
        "--generate.prompt=JULIET:",
        "--generate.seed=0",
        cwd=bare_dir,
    )
    assert alone.returncode == 0 and result.stdout.endswith(alone.stdout), (result.stdout, alone.stdout)


def test_interactive_mode_generates_on_the_accelerator_asked_for(bare_dir, cli_main, monkeypatch):
    """Before, it took a CUDA GPU whenever there was one, whatever --trainer.accelerator said."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(sys, "stdin", io.StringIO("ROMEO:\n"))
    args = ["--ckpt_path=model.ckpt", "--generate.interactive=true", "--generate.max_new_tokens=5"]
    result = cli_main("predict", *args, "--trainer.accelerator=cpu", cwd=bare_dir)
    assert result.returncode == 0 and result.stdout.startswith("ROMEO:"), result.stderr[-2000:]


def test_interactive_mode_in_a_terminal_ends_its_line_at_ctrl_d(bare_dir, cli_main, monkeypatch):
    """Before, Ctrl-D left the shell's next prompt after "> " on the same line."""
    controller, terminal = pty.openpty()
    with open(terminal, encoding="utf-8", closefd=True) as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        os.write(controller, b"ROMEO:\n\x04")  # a prompt, Enter, then Ctrl-D at the start of a line
        args = ["--generate.interactive=true", "--generate.max_new_tokens=5", "--generate.prompt=JULIET:"]
        result = cli_main("predict", "--ckpt_path=model.ckpt", *args, cwd=bare_dir)
    os.close(controller)
    assert result.returncode == 0, result.stderr
    assert "ignoring --generate.prompt" in result.stderr
    first, second, end = result.stdout.split("> ")
    assert first == "" and second.startswith("ROMEO:") and len(second) == len("ROMEO:") + 5 + 1
    assert end == "\n"


def test_interactive_mode_flushes_its_prompt_and_each_character(monkeypatch):
    """A terminal's stdout is line-buffered: "> " must be flushed before stdin is read, and each new
    character as it comes, else nothing shows until the line ends."""
    events = []
    monkeypatch.setattr(sys, "stdout", Events(events))
    monkeypatch.setattr(sys, "stdin", Events(events, "ROMEO:\n", tty=True))
    module = GPTModule(vocab=" :EMORabc", d_model=16, num_heads=2, num_blocks=1, context_length=8)
    interactive_session(module, GenerationSettings(max_new_tokens=5))
    reads = [i for i, event in enumerate(events) if event == ("read",)]
    assert len(reads) == 2  # the prompt, then the end of input
    for read in reads:
        marker = max(i for i in range(read) if events[i] == ("write", "> "))
        assert ("flush",) in events[marker:read]
    start = events.index(("write", "ROMEO:"))
    end = events.index(("write", "\n"), start)  # the answer's end
    written = [event[1] for event in events[start + 1 : end] if event[0] == "write" and event[1]]
    flushes = [i for i in range(start, end) if events[i] == ("flush",)]
    assert len(written) == 5 and len(flushes) == 5  # each character as it comes


def test_ctrl_c_stops_an_answer_or_a_prompt_and_the_session_goes_on(monkeypatch, capsys):
    lines = iter([KeyboardInterrupt, "ab\n", "ba\n", ""])  # Ctrl-C at the prompt, two prompts, EOF

    class Keyboard:
        def readline(self) -> str:
            line = next(lines)
            if line is KeyboardInterrupt:
                raise KeyboardInterrupt
            return line

        def isatty(self) -> bool:
            return False

    module = GPTModule(vocab=" ab", d_model=16, num_heads=2, num_blocks=1, context_length=8)  # no newline
    stream = module.stream_text

    def ctrl_c_in_the_first_answer(prompt, *args, **kwargs):
        for i, chars in enumerate(stream(prompt, *args, **kwargs)):
            if prompt == "ab" and i == 2:
                raise KeyboardInterrupt
            yield chars

    monkeypatch.setattr(module, "stream_text", ctrl_c_in_the_first_answer)
    monkeypatch.setattr(sys, "stdin", Keyboard())
    try:
        interactive_session(module, GenerationSettings(max_new_tokens=5))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended the session")
    empty, stopped, whole = capsys.readouterr().out.split("\n")[:3]
    assert empty == "" and stopped.startswith("ab") and stopped.endswith(" [stopped]")
    assert len(stopped) == len("ab") + 2 + len(" [stopped]")
    assert whole.startswith("ba") and len(whole) == len("ba") + 5
