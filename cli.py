"""Train, validate and sample from a character-level GPT: ``python cli.py --help``."""

from lightning_gpt.cli import main

if __name__ == "__main__":
    main()
