"""The seed's interactive mode: read a prompt, stream its continuation, repeat until EOF."""

from __future__ import annotations

import sys

from lightning_gpt.generation import GenerationSettings, prepare_prompt
from lightning_gpt.tokenizer import UnknownCharacterError


def interactive_session(module, settings: GenerationSettings) -> None:
    """Loop over prompts from stdin: Ctrl-C stops the current generation, Ctrl-D (EOF) ends."""
    stdin, stdout = sys.stdin, sys.stdout
    if hasattr(stdin, "reconfigure"):  # bytes stdin's encoding cannot read: unknown characters, not an end
        stdin.reconfigure(errors="surrogateescape")
    interactive = stdin.isatty()
    if interactive:
        print("Type a prompt and press Enter. Ctrl-C stops a generation, Ctrl-D quits.", file=sys.stderr)
    answered = 0
    while True:
        if interactive:
            print("> ", end="", file=stdout, flush=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            continue
        if not line:  # EOF
            if interactive:  # Ctrl-D: the shell's prompt then starts on a line of its own
                stdout.write("\n")
            break
        try:
            prompt = prepare_prompt(line.rstrip("\r\n"), module.tokenizer, settings.drop_unknown)
        except UnknownCharacterError as error:
            print(f"error: {error}", file=sys.stderr)
            continue
        stdout.write(prompt)
        try:
            for chars in module.stream_text(prompt, settings.max_new_tokens, **settings.sampling(answered)):
                print(chars[0], end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        print(file=stdout, flush=True)
        answered += 1
