"""Two CPU processes (torchrun → accelerate's gloo DDP) run the same train command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from expertkit.naming import normalise_model_name

from .helpers import write_tiny_expert


@pytest.mark.slow  # subprocesses (make test runs every tier; -m "not slow" for a quick pass)
def test_two_process_ddp_trains_and_counts_tokens_across_ranks(tmp_path: Path, tiny_llama_dir: Path) -> None:
    config = {"max_steps": None, "epochs": 1, "eval_steps": 2, "logging_steps": 1}
    single = write_tiny_expert(tmp_path / "single", [tiny_llama_dir], config=config)
    ddp = write_tiny_expert(tmp_path / "ddp", [tiny_llama_dir], config=config)
    command = [sys.executable, "-m", "expertkit", "train", "--manifest", str(single), "--json"]
    one = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    # accelerate launch needs mpirun for several CPU processes; torchrun sets the same environment.
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(
        [*launch, "-m", "expertkit", "train", "--manifest", str(ddp), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    weights = ddp / "weights" / normalise_model_name(str(tiny_llama_dir))
    assert (weights / "adapter" / "adapter_model.safetensors").is_file()
    single_meta = json.loads(one.stdout)
    ddp_meta = json.loads((weights / "training_meta.json").read_text())
    # Each rank takes half the rows per step: half the steps for the same epoch, every token seen once.
    assert ddp_meta["metrics"]["steps"] == -(-single_meta["metrics"]["steps"] // 2)
    # DistributedSampler pads an odd row count with a repeated row; this set's is even, so each
    # token is seen exactly once across the two ranks.
    rows = json.loads((Path(ddp_meta["data"]["cache"]) / "dataset.meta.json").read_text())["packing"]["train"]["rows"]
    assert rows % 2 == 0
    assert ddp_meta["metrics"]["tokens_seen"] == single_meta["metrics"]["tokens_seen"]
