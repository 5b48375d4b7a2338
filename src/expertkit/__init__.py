"""expertkit: build, validate and run small specialist LLM experts.

The library is laid out by lifecycle stage (``manifest``, ``models``, ``data``, ``train``, ``eval``,
``package``, ``runtime``, ``serve``; ``workflows`` above them); the CLI in ``expertkit.cli`` is a thin
layer over it. The handful of names a library user needs are here, imported on first use, so
``import expertkit`` stays cheap (no torch)::

    import expertkit
    from pathlib import Path

    expert = expertkit.open_expert(Path("my-expert"))               # manifest + base model, once
    result = expertkit.train_expert(expertkit.TrainRequest(expert.path), context=expert)
    results = expertkit.run_eval(expertkit.EvalRequest("./my-expert", set_path=Path("held-out.jsonl"),
                                                      set_format="jsonl"))
    package = expertkit.package_expert(expertkit.PackageRequest(expert.root, output=Path("dist")))
    expertkit.install_package(package.path)
    engine = expertkit.Engine.for_experts(["my-expert"], expertkit.LoadOptions())
    print(expertkit.ask(engine, "my-expert", [{"role": "user", "content": "Ticket: ..."}]).text)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from expertkit.errors import ExpertkitError
from expertkit.version import __version__

# name → module that defines it (imported when the name is first used)
_PUBLIC: dict[str, str] = {
    "load_manifest": "expertkit.manifest.load",
    "validate_manifest": "expertkit.manifest.validate",
    "ExpertContext": "expertkit.models.context",
    "open_expert": "expertkit.models.context",
    "prepare_expert_data": "expertkit.data.expert_data",
    "TrainRequest": "expertkit.train.job",
    "TrainResult": "expertkit.train.job",
    "train_expert": "expertkit.train.run",
    "train_with_gates": "expertkit.workflows.curriculum",
    "EvalRequest": "expertkit.eval.job",
    "EvalResult": "expertkit.eval.job",
    "run_eval": "expertkit.eval.run",
    "PackageRequest": "expertkit.package.build",
    "PackageResult": "expertkit.package.build",
    "package_expert": "expertkit.package.build",
    "verify_package": "expertkit.package.verify",
    "install_package": "expertkit.package.store",
    "Engine": "expertkit.runtime.engine",
    "LoadOptions": "expertkit.runtime.options",
    "ask": "expertkit.runtime.answer",
}

__all__ = [
    "Engine",
    "EvalRequest",
    "EvalResult",
    "ExpertContext",
    "ExpertkitError",
    "LoadOptions",
    "PackageRequest",
    "PackageResult",
    "TrainRequest",
    "TrainResult",
    "__version__",
    "ask",
    "install_package",
    "load_manifest",
    "open_expert",
    "package_expert",
    "prepare_expert_data",
    "run_eval",
    "train_expert",
    "train_with_gates",
    "validate_manifest",
    "verify_package",
]

if TYPE_CHECKING:
    from expertkit.data.expert_data import prepare_expert_data
    from expertkit.eval.job import EvalRequest, EvalResult
    from expertkit.eval.run import run_eval
    from expertkit.manifest.load import load_manifest
    from expertkit.manifest.validate import validate_manifest
    from expertkit.models.context import ExpertContext, open_expert
    from expertkit.package.build import PackageRequest, PackageResult, package_expert
    from expertkit.package.store import install_package
    from expertkit.package.verify import verify_package
    from expertkit.runtime.answer import ask
    from expertkit.runtime.engine import Engine
    from expertkit.runtime.options import LoadOptions
    from expertkit.train.job import TrainRequest, TrainResult
    from expertkit.train.run import train_expert
    from expertkit.workflows.curriculum import train_with_gates


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'expertkit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
