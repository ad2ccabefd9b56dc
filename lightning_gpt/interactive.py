"""The seed's interactive mode: read a prompt, stream its continuation, repeat until EOF."""

from __future__ import annotations

import sys

from lightning_gpt.generation import GenerationSettings, nth_seed, prepare_prompt
from lightning_gpt.tokenizer import UnknownCharacterError


def interactive_session(module, settings: GenerationSettings) -> None:
    """Loop over prompts from stdin. Ctrl-C stops the current generation and asks for the next prompt;
    Ctrl-D (EOF) ends."""
    stdin, stdout = sys.stdin, sys.stdout
    if hasattr(stdin, "reconfigure"):  # bytes stdin's encoding cannot read: unknown characters, not an end
        stdin.reconfigure(errors="surrogateescape")
    interactive = stdin.isatty()
    if interactive:
        print("Type a prompt and press Enter. Ctrl-C stops a generation, Ctrl-D quits.", file=sys.stderr)
    answered = 0
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
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
            s = settings
            sampling = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, keep=s.keep)
            for chars in module.stream_text(
                prompt, s.max_new_tokens, seed=nth_seed(s.seed, answered), **sampling
            ):
                stdout.write(chars[0])
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        stdout.write("\n")
        stdout.flush()
        answered += 1
