"""The command line (``python cli.py`` and the ``lightning-gpt`` command): ``serve`` without importing
Lightning (most of its start-up time otherwise); the other subcommands through LightningCLI
(``lightning_gpt.cli``). A ``UserError`` ends it with one line per mistake and exit status 2."""

from __future__ import annotations

import os
import sys

from lightning_gpt.errors import UserError


def main(args: list[str] | None = None) -> None:
    """``python cli.py ARGS``; ``args`` in place of ``sys.argv[1:]``."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv[:1] == ["serve"]:  # not a Trainer method: its own parser, and LitServe instead of Lightning
            from lightning_gpt.serve import main as serve

            serve(argv[1:])
        else:
            from lightning_gpt.cli import run

            run(args)
    except UserError as error:  # one line per mistake found
        # in one write: stderr is unbuffered, and under DDP every rank may report the same error at once
        sys.stderr.write("".join(f"error: {line}\n" for line in str(error).splitlines()))
        sys.exit(2)
    except BrokenPipeError:  # predict's reader went away (`| head`): stop quietly, as Unix tools do
        if argv[:1] != ["predict"]:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the flush at exit
        sys.exit(1)


if __name__ == "__main__":  # not when cli.py, the lightning-gpt script or a test imports it
    main()
