"""``python -m expertkit`` is ``expert-cli``."""

from expertkit.cli import main

if __name__ == "__main__":
    main()
