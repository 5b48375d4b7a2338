"""``package`` with ``perf`` measured: the figures ship in the packaged manifest, the lock covers the
manifest that carries them, the package installs and verifies, and --no-measure ships no perf."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.package.build import PackageRequest
from expertkit.package.lock import parse_lock
from expertkit.package.verify import verify_package
from expertkit.runtime.perf import PerfPlan
from expertkit.workflows.ship import package_measured

_register()
SMALL = PerfPlan(new_tokens=4, batch_sizes=(1, 2), repeats=1)


def members(package: Path) -> dict[str, bytes]:
    with tarfile.open(package, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_perf_is_measured_and_shipped(expert_dir: Path, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["perf"] = {"latency_ms_overhead": 0.5, "_comment": "hand-written: replaced by the measurement"}
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    result = package_measured(PackageRequest(expert_dir, output=tmp_path / "dist"), dtype="float32", plan=SMALL)
    files = members(result.path)
    shipped = json.loads(files["manifest.json"])["perf"]
    assert shipped["supported_batch_sizes"] == [1, 2] and set(shipped["tokens_per_s"]) == {"1", "2"}
    assert all(rate > 0 for rate in shipped["tokens_per_s"].values()) and shipped["base_tokens_per_s"] > 0
    assert shipped["latency_ms_overhead"] >= 0
    assert shipped["adapter_parameters"] > 0
    model = next((expert_dir / "weights").iterdir()).name
    adapter = expert_dir / "weights" / model / "adapter" / "adapter_model.safetensors"
    assert shipped["adapter_bytes"] == adapter.stat().st_size
    machine = shipped["measured_on"]
    assert machine["device"] == "cpu" and machine["dtype"] == "float32" and machine["new_tokens"] == 4
    assert "memory_mb_overhead" in shipped  # Linux: resident memory is readable
    assert result.manifest.perf is not None and result.manifest.perf.adapter_bytes == shipped["adapter_bytes"]
    lock = parse_lock(files["expert.lock.json"], "here")
    assert lock.files["manifest.json"] == hashlib.sha256(files["manifest.json"]).hexdigest()
    assert verify_package(result.path).ok


def test_no_measure_ships_no_perf_and_the_cli_shows_the_figures(
    expert_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["perf"] = {"latency_ms_overhead": 0.5}
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    runner = CliRunner()
    plain = runner.invoke(
        app, ["package", "--expert", str(expert_dir), "--output", str(tmp_path / "a"), "--no-measure"]
    )
    assert plain.exit_code == 0, plain.output
    package = next((tmp_path / "a").glob("*.expert"))
    assert "perf" not in json.loads(members(package)["manifest.json"])  # a hand-written perf never ships
    measured = runner.invoke(
        app, ["package", "--expert", str(expert_dir), "--output", str(tmp_path / "b"), "--dtype", "float32", "--json"]
    )
    assert measured.exit_code == 0, measured.output
    body = json.loads(measured.stdout)
    assert body["perf"]["measured_on"]["dtype"] == "float32" and body["perf"]["tokens_per_s"]["1"] > 0
