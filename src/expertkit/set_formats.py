"""The formats an evaluation set can be read in, by name: a leaf module, so the CLI can offer them as
choices without importing the manifest's models (``expert-cli --help`` stays cheap)."""

from __future__ import annotations

from typing import Literal

EvalFormat = Literal["spider", "geoquery", "defog", "bfcl", "bfcl-irrelevance", "text2cypher", "jsonl"]
