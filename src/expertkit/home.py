"""Where expertkit keeps its files: ``$EXPERTKIT_HOME`` (default ``~/.cache/expertkit``)."""

from __future__ import annotations

import os
from pathlib import Path


def expertkit_home() -> Path:
    """The root directory for cached models, fingerprints and installed experts.

    Read on every call (never at import) so tests can point ``EXPERTKIT_HOME`` at a temp dir.
    """
    configured = os.environ.get("EXPERTKIT_HOME")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "expertkit"


def models_dir() -> Path:
    """Directory holding converted base models, one folder per normalised model name."""
    return expertkit_home() / "models"
