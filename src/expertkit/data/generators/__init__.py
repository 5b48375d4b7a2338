"""Data generators with lineage (``expert-cli data generate``): see :mod:`.base` and :mod:`.templates`."""

from expertkit.data.generators import templates as _templates  # noqa: F401  (registers "templates")
from expertkit.data.generators.base import GENERATORS, Generated, lineage_path, read_config, run_generator

__all__ = ["GENERATORS", "Generated", "lineage_path", "read_config", "run_generator"]
