"""Train, validate and sample from a character-level GPT: ``python cli.py --help``."""

if __name__ == "__main__":  # not on import: `serve`'s worker processes start by importing this file
    from lightning_gpt.cli import main

    main()
