"""The memory calculator: the same estimate as ``expert-cli estimate --base`` (in a worker process, so
torch never enters the dashboard), the breakdown summing to the total, presets, measured peaks of
runs of the same shape, and inputs that are refused; the estimator's quantisation and optimizer terms."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from expertkit.cli.app import _register
from expertkit.cli.app import app as cli
from expertkit.dashboard.app import DashboardConfig, build_dashboard
from expertkit.home import models_dir
from expertkit.manifest.sections import Adapter
from expertkit.runs import archive_run, new_run_id, register_run
from expertkit.train.estimate import MemoryShape, estimate_memory

REPO = Path(__file__).resolve().parents[3]
QUERY = {"model": "tiny-llama", "preset": "H100 (80 GB)", "adapter": "lora", "rank": "4", "targets": "q_proj,v_proj",
         "batch_size": "2", "seq_length": "64", "precision": "bf16"}  # fmt: skip


@pytest.fixture
def ready_tiny(tiny_llama_dir: Path, expertkit_home: Path) -> str:
    """The tiny model as a converted model in the home (what ``models list`` shows as ready)."""
    shutil.copytree(tiny_llama_dir, models_dir() / "tiny-llama")
    return "tiny-llama"


@pytest.fixture
def web(tmp_path: Path, ready_tiny: str) -> Any:
    app = build_dashboard(DashboardConfig(queue_url=f"sqlite:///{tmp_path / 'q.db'}"))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # the context stops the worker at the end
        yield client


def test_the_calculator_gives_the_cli_estimate_and_a_breakdown_that_sums(web: TestClient) -> None:
    body = web.get("/api/memory", params=QUERY).json()
    args = [
        "estimate",
        "--base",
        str(models_dir() / "tiny-llama"),
        "--rank",
        "4",
        "--targets",
        "q_proj,v_proj",
        "--batch-size",
        "2",
    ]
    args += ["--max-seq-length", "64", "--gpu", "h100", "--json"]
    _register()
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)
    assert body["components_mib"] == expected["components_mib"] and body["total_mib"] == expected["total_mib"]
    assert body["trainable_parameters"] == expected["trainable_parameters"] > 0
    assert body["device"] == "cuda" and body["available_mib"] == 81559 and body["fits"] is True
    assert sum(s["mib"] for s in body["breakdown"]) == pytest.approx(body["total_mib"], abs=0.5)
    page = web.get("/memory", params=QUERY)
    assert page.status_code == 200 and 'id="breakdown"' in page.text and page.text.count('class="segment"') == 6
    assert "H200 (141 GB)" in page.text and "RTX 3090 (24 GB)" in page.text and "CPU RAM (this machine)" in page.text


def test_a_shape_that_does_not_fit_says_so_and_the_cpu_preset_adds_the_runtime(web: TestClient) -> None:
    huge = web.get(
        "/api/memory", params={**QUERY, "batch_size": "64", "seq_length": "131072", "preset": "RTX 3090 (24 GB)"}
    )
    assert huge.json()["fits"] is False and huge.json()["total_mib"] > 24576
    assert "does not fit RTX 3090" in web.get("/memory", params={**QUERY, "batch_size": "64", "seq_length": "131072",
                                                                 "preset": "RTX 3090 (24 GB)"}).text  # fmt: skip
    cpu = web.get("/api/memory", params={**QUERY, "preset": "CPU RAM (this machine)"}).json()
    assert cpu["device"] == "cpu" and cpu["components_mib"]["runtime (torch, libraries)"] > 50


def test_past_runs_of_the_same_shape_are_shown_with_the_miss(web: TestClient, tmp_path: Path) -> None:
    first = web.get("/api/memory", params={**QUERY, "preset": "CPU RAM (this machine)"}).json()
    assert first["measured_runs"] == []
    weights = tmp_path / "e" / "weights" / "tiny-llama"
    weights.mkdir(parents=True)
    meta = {
        "expert": {"name": "e"},
        "base_model": {"name": "tiny-llama.gguf", "path": str((models_dir() / "tiny-llama").resolve())},
        "parameters": {"trainable": first["trainable_parameters"], "total": first["total_parameters"]},
        "plan": {"batch_size": 2, "precision": {"bf16": True, "device": "cpu"}, "gradient_checkpointing": False,
                 "quantization": "none", "optimizer": {"type": "adamw"}},
        "manifest": {"training": {"config": {"max_seq_length": 64}}},
        "metrics": {"cpu_peak_rss_mib": 1000.0},
    }  # fmt: skip
    (weights / "training_meta.json").write_text(json.dumps(meta))
    (weights / "events.jsonl").write_text("")
    archive_run(register_run(new_run_id(), "e", tmp_path / "e", weights, "tiny-llama"), None)
    again = web.get("/api/memory", params={**QUERY, "preset": "CPU RAM (this machine)"}).json()
    (measured,) = again["measured_runs"]
    assert measured["peak_mib"] == 1000.0 and measured["expert"] == "e"
    assert measured["error"] == pytest.approx((again["total_mib"] - 1000) / 1000, abs=1e-3)
    other = web.get("/api/memory", params={**QUERY, "batch_size": "3", "preset": "CPU RAM (this machine)"}).json()
    assert other["measured_runs"] == []  # another batch size is another shape
    assert "estimate off by" in web.get("/memory", params={**QUERY, "preset": "CPU RAM (this machine)"}).text


def test_inputs_are_checked_before_anything_runs(web: TestClient, tiny_llama_dir: Path) -> None:
    cases = {
        "model": (str(tiny_llama_dir), "is not ready on this machine"),  # a path is never resolved for a request
        "rank": ("0", "rank: Input should be greater than or equal to 1"),
        "adapter": ("qlora", "adapter: Input should be"),
        "preset": ("TPU v5", "unknown preset 'TPU v5'"),
    }
    for field, (value, message) in cases.items():
        response = web.get("/api/memory", params={**QUERY, field: value})
        assert response.status_code == 400 and message in response.json()["error"]["message"], field
    page = web.get("/memory", params={**QUERY, "rank": "0"})
    assert page.status_code == 400 and "rank: Input should be" in page.text and "Traceback" not in page.text
    assert web.get("/memory").status_code == 200  # the empty form: nothing estimated


def test_the_dashboard_process_never_imports_torch(tmp_path: Path, ready_tiny: str) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\nfrom fastapi.testclient import TestClient\n"
        "from expertkit.dashboard.app import DashboardConfig, build_dashboard\n"
        "if __name__ == '__main__':\n"
        f"    app = build_dashboard(DashboardConfig(queue_url='sqlite:///{tmp_path / 'q.db'}'))\n"
        "    with TestClient(app, base_url='http://127.0.0.1') as web:\n"
        f"        total = web.get('/api/memory', params={QUERY!r}).json()['total_mib']\n"
        "        print(total > 0, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def alive(pid: str) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except OSError:
        return False


def test_the_calculators_worker_ends_with_the_dashboard_even_when_it_is_killed(tmp_path: Path, ready_tiny: str) -> None:
    import os
    import signal
    import time

    import httpx

    from unit.dashboard.test_browser import free_port, wait_for

    port = free_port()
    cli = [
        sys.executable,
        "-m",
        "expertkit",
        "dashboard",
        "--port",
        str(port),
        "--queue",
        f"sqlite:///{tmp_path / 'q.db'}",
    ]
    server = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        assert httpx.get(f"http://127.0.0.1:{port}/api/memory", params=QUERY, timeout=120).status_code == 200
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        workers = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) == 1  # the calculator's worker (beside multiprocessing's resource tracker)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        deadline = time.time() + 15
        while any(alive(c) for c in children) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(c) for c in children), "the worker outlived the dashboard"
    finally:
        server.kill()


def test_quantisation_and_the_optimizer_change_the_terms_they_should(tiny_llama_dir: Path) -> None:
    adapter = Adapter(type="lora", r=4, target_modules=["q_proj", "v_proj"])

    def run(**changes: Any) -> dict[str, float]:
        shape = MemoryShape(2, 64, True, "cuda", False, **changes)
        return estimate_memory(tiny_llama_dir, adapter, shape).components

    plain, int8, int4 = run(), run(quantization="int8"), run(quantization="int4")
    assert plain["weights"] > int8["weights"] > int4["weights"] > 0
    assert int8["activations"] == plain["activations"] and int8["optimizer states"] == plain["optimizer states"]
    paged, muon = run(optimizer="paged_adamw_8bit"), run(optimizer="muon")
    assert paged["optimizer states"] == pytest.approx(plain["optimizer states"] / 4)
    assert muon["optimizer states"] == pytest.approx(plain["optimizer states"] / 2)  # LoRA's A and B are all 2-D
