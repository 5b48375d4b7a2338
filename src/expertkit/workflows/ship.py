"""Package an expert with its ``perf`` measured: the package stage builds, the runtime measures.

Packaging may not import the runtime (the runtime loads packages), so the measurement is handed to
:func:`~expertkit.package.build.package_expert` from here, above both stages.
"""

from __future__ import annotations

from pathlib import Path

from expertkit.manifest.sections import Perf
from expertkit.models.hardware import best_dtype
from expertkit.models.load import DType
from expertkit.package.build import PackageRequest, PackageResult, package_expert
from expertkit.package.references import resolve_expert
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.perf import PerfPlan, measure_perf


def package_measured(
    request: PackageRequest,
    measure: bool = True,
    dtype: DType = "auto",
    device: str = "cpu",
    plan: PerfPlan | None = None,
) -> PackageResult:
    """:func:`package_expert`, with ``perf`` measured on this machine unless ``measure`` is off.

    The measurement loads the package as it will be installed (laid out unpacked, every digest
    re-checked against its lock), on the base model it names, through the runtime ``serve`` uses.
    """

    def measured(directory: Path) -> Perf:
        files = resolve_expert(str(directory))
        chosen: DType = best_dtype(device) if dtype == "auto" else dtype  # type: ignore[assignment]
        return measure_perf(files, LoadOptions(dtype=chosen, device=device), plan).to_manifest()

    return package_expert(request, measure=measured if measure else None)
