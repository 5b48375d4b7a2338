"""expertkit: build, validate and run small specialist LLM experts.

The library is laid out by lifecycle stage (``manifest``, ``models``, ...); the CLI in
``expertkit.cli`` is a thin layer over it. Importing ``expertkit`` is cheap: no torch.
"""

from importlib.metadata import PackageNotFoundError, version

from expertkit.errors import ExpertkitError

try:
    __version__ = version("expertkit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["ExpertkitError", "__version__"]
