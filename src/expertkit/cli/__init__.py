"""The command-line layer. Each command parses options, calls one library function, prints.

Nothing in the library imports this package.
"""

from expertkit.cli.app import app, main

__all__ = ["app", "main"]
