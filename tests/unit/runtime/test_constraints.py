"""``constraints`` are enforced when experts are loaded together (before any model loads)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from expertkit.errors import UsageError
from expertkit.manifest.sections import Constraints
from expertkit.runtime.constraints import ordered_by_constraints


def expert(name: str, **constraints) -> SimpleNamespace:
    manifest = SimpleNamespace(name=name, constraints=Constraints(**constraints) if constraints else None)
    return SimpleNamespace(loaded=SimpleNamespace(manifest=manifest))


def names(files) -> list[str]:
    return [f.loaded.manifest.name for f in files]


def test_requires_and_incompatible_with_refuse_the_combination() -> None:
    with pytest.raises(UsageError, match=r"sql requires schema-linker to be loaded with it") as caught:
        ordered_by_constraints([expert("sql", requires=["schema-linker"])])
    assert "--experts sql,schema-linker" in caught.value.hint
    with pytest.raises(UsageError, match=r"sql cannot be loaded with legacy-sql \(constraints.incompatible_with\)"):
        ordered_by_constraints([expert("sql", incompatible_with=["legacy-sql"]), expert("legacy-sql")])
    together = [expert("sql", requires=["schema-linker"]), expert("schema-linker")]
    assert names(ordered_by_constraints(together)) == ["sql", "schema-linker"]


def test_load_order_sorts_and_unordered_experts_keep_their_place_after() -> None:
    loaded = [expert("c"), expert("b", load_order=2), expert("d"), expert("a", load_order=1)]
    assert names(ordered_by_constraints(loaded)) == ["a", "b", "c", "d"]
