"""An expert's ``constraints`` when several are loaded together: ``requires`` and
``incompatible_with`` refuse a combination before any model loads; ``load_order`` sorts them (the
order routing breaks ties in and listings show). ``max_chain`` always holds: one expert answers each
request, none hands its answer to another."""

from __future__ import annotations

from expertkit.errors import UsageError
from expertkit.package.references import ExpertFiles


def ordered_by_constraints(files: list[ExpertFiles]) -> list[ExpertFiles]:
    """``files`` sorted by ``constraints.load_order`` (unset: after the ordered ones, as given).

    Raises:
        UsageError: an expert's ``requires`` names one not loaded, or its ``incompatible_with`` one that is.
    """
    names = {item.loaded.manifest.name for item in files}
    for item in files:
        manifest = item.loaded.manifest
        constraints = manifest.constraints
        if constraints is None:
            continue
        missing = sorted(set(constraints.requires or []) - names)
        if missing:
            raise UsageError(
                f"{manifest.name} requires {', '.join(missing)} to be loaded with it (constraints.requires)",
                f"load them together: --experts {','.join([manifest.name, *missing])}",
            )
        clash = sorted(set(constraints.incompatible_with or []) & (names - {manifest.name}))
        if clash:
            raise UsageError(
                f"{manifest.name} cannot be loaded with {', '.join(clash)} (constraints.incompatible_with)",
                "load them in separate processes",
            )
    unset = float("inf")

    def order(item: ExpertFiles) -> float:
        constraints = item.loaded.manifest.constraints
        return unset if constraints is None or constraints.load_order is None else constraints.load_order

    return sorted(files, key=order)
