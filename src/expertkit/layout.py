"""File and directory names shared by training (which writes them) and packaging (which reads them).

An expert directory holds ``manifest.json`` and, per base model, ``weights/<normalised-model>/``
with the trained ``adapter/`` (or ``model/`` for a full fine-tune), ``soft_prompts/`` and
``training_meta.json``.
"""

from __future__ import annotations

MANIFEST_FILE = "manifest.json"  # in an expert directory and at the root of a package
LOCK_FILE = "expert.lock.json"  # written by package, beside the manifest in a package and an installed expert
WEIGHTS_DIR = "weights"
ADAPTER_SUBDIR = "adapter"
FULL_SUBDIR = "model"
SOFT_PROMPT_DIR = "soft_prompts"
TRAINING_META = "training_meta.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_DIR = "checkpoints"  # weights/<model>/checkpoints/: guarded checkpoints while training
EVALS_DIR = "evals"  # $EXPERTKIT_HOME/evals/<expert>/base/<set>.json: the base model's results under an expert
BASE_EVALS = "base"
STORE_DIR = "experts"  # $EXPERTKIT_HOME/experts/<name>/<version>/: installed experts
PHASES_DIR = "phases"  # weights/<model>/phases/<NN>-<name>/: each curriculum phase's published weights
