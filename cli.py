"""Train, validate, sample from and serve a character-level GPT: ``python cli.py --help``."""

if __name__ == "__main__":  # not on import: `serve`'s worker processes start by importing this file
    from lightning_gpt.__main__ import main

    main()
