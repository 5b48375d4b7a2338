"""The installed expertkit version (``0.0.0`` when running from a source tree without installation)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("expertkit")
except PackageNotFoundError:
    __version__ = "0.0.0"
