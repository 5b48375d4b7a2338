"""At least 40 invalid manifests, each reported with its exact JSON path and message.

Every case mutates tests/fixtures/manifests/valid/v2_full.json in one place. Schema-level cases
(types, ranges, enums, unknown keys) and semantic cases (cross-field rules, files) both appear.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expertkit.manifest import validate_manifest
from unit.manifest.helpers import DELETE, load_valid, mutate, write_manifest

CASES = [
    ("missing-name", "name", DELETE, "$.name", "missing required key 'name'"),
    ("name-uppercase", "name", "Expert SQL", "$.name", "value does not match the required format"),
    ("version-not-semver", "version", "1.0", "$.version", "value does not match the required format"),
    ("version-wrong-type", "version", 1, "$.version", "wrong type"),
    ("description-missing", "description", DELETE, "$.description", "missing required key 'description'"),
    ("schema-version-bad", "schema_version", "3.0", "$.schema_version", "unsupported schema version"),
    (
        "schema-version-missing",
        "schema_version",
        DELETE,
        "$.schema_version",
        'missing required key \'schema_version\'; this looks like a v2.0 manifest: add "schema_version": "2.0"',
    ),
    (
        "unknown-root-key",
        "descripton",
        "x",
        "$.descripton",
        "unknown key 'descripton'; did you mean 'description'?",
    ),
    ("base-models-empty", "base_models", [], "$.base_models", "wrong size"),
    ("base-models-not-list", "base_models", {"name": "x"}, "$.base_models", "wrong type"),
    (
        "base-model-no-name",
        "base_models[0].name",
        DELETE,
        "$.base_models[0].name",
        "missing required key 'name'",
    ),
    (
        "base-model-bad-sha",
        "base_models[0].sha256",
        "abc",
        "$.base_models[0].sha256",
        "value does not match the required format",
    ),
    (
        "base-model-bad-quant",
        "base_models[0].quantization",
        "int3",
        "$.base_models[0].quantization",
        "value not allowed; did you mean 'int8'?",
    ),
    (
        "rope-factor-zero",
        "base_models[0].rope_scaling.factor",
        0,
        "$.base_models[0].rope_scaling.factor",
        "value out of range",
    ),
    ("rope-wrong-type", "base_models[0].rope_scaling", 8, "$.base_models[0].rope_scaling", "wrong type"),
    ("adapters-empty", "base_models[0].adapters", [], "$.base_models[0].adapters", "wrong size"),
    (
        "adapter-bad-type",
        "base_models[0].adapters[0].type",
        "lorra",
        "$.base_models[0].adapters[0].type",
        "value not allowed; did you mean 'lora'?",
    ),
    (
        "adapter-rank-zero",
        "base_models[0].adapters[0].r",
        0,
        "$.base_models[0].adapters[0].r",
        "value out of range",
    ),
    (
        "adapter-rank-float",
        "base_models[0].adapters[0].r",
        12.5,
        "$.base_models[0].adapters[0].r",
        "wrong type",
    ),
    (
        "adapter-rank-string",
        "base_models[0].adapters[0].r",
        "12",
        "$.base_models[0].adapters[0].r",
        "wrong type",
    ),
    (
        "adapter-alpha-zero",
        "base_models[0].adapters[0].alpha",
        0,
        "$.base_models[0].adapters[0].alpha",
        "value out of range",
    ),
    (
        "adapter-dropout-one",
        "base_models[0].adapters[0].dropout",
        1.0,
        "$.base_models[0].adapters[0].dropout",
        "value out of range",
    ),
    (
        "adapter-targets-empty",
        "base_models[0].adapters[0].target_modules",
        [],
        "$.base_models[0].adapters[0].target_modules",
        "wrong size",
    ),
    (
        "adapter-unknown-key",
        "base_models[0].adapters[0].dropuot",
        0.1,
        "$.base_models[0].adapters[0].dropuot",
        "unknown key 'dropuot'; did you mean 'dropout'?",
    ),
    (
        "adapter-no-rank",
        "base_models[0].adapters[0].r",
        DELETE,
        "$.base_models[0].adapters[0].r",
        "DoRA needs a rank",
    ),
    (
        "adapter-no-alpha",
        "base_models[0].adapters[0].alpha",
        DELETE,
        "$.base_models[0].adapters[0].alpha",
        "DoRA needs alpha",
    ),
    (
        "adapter-rank-disagree",
        "base_models[0].adapters[0].rank",
        8,
        "$.base_models[0].adapters[0].rank",
        "r and rank disagree; give one of them",
    ),
    (
        "adapter-norm-target",
        "base_models[0].adapters[0].target_modules",
        ["q_proj", "q_norm"],
        "$.base_models[0].adapters[0].target_modules[1]",
        "'q_norm' is a norm, embedding or head; adapting it destabilises training (set allow_unsafe_targets: true to force it)",
    ),
    (
        "adapter-lm-head-target",
        "base_models[0].adapters[0].target_modules",
        ["lm_head"],
        "$.base_models[0].adapters[0].target_modules[0]",
        "'lm_head' is a norm, embedding or head; adapting it destabilises training (set allow_unsafe_targets: true to force it)",
    ),
    (
        "adapter-ff-on-dora",
        "base_models[0].adapters[0].feedforward_modules",
        ["down_proj"],
        "$.base_models[0].adapters[0].feedforward_modules",
        "feedforward_modules is for IA³ only; remove it",
    ),
    (
        "soft-prompt-zero-tokens",
        "soft_prompts[0].num_virtual_tokens",
        0,
        "$.soft_prompts[0].num_virtual_tokens",
        "value out of range",
    ),
    (
        "soft-prompt-text-no-init-text",
        "soft_prompts[0].init",
        "TEXT",
        "$.soft_prompts[0].init_text",
        "init TEXT needs init_text",
    ),
    ("soft-prompt-bad-init", "soft_prompts[0].init", "ZEROS", "$.soft_prompts[0].init", "value not allowed"),
    (
        "temperature-negative",
        "training.decoding.temperature",
        -0.1,
        "$.training.decoding.temperature",
        "value out of range",
    ),
    ("top-p-zero", "training.decoding.top_p", 0, "$.training.decoding.top_p", "value out of range"),
    ("top-p-above-one", "training.decoding.top_p", 1.01, "$.training.decoding.top_p", "value out of range"),
    ("top-k-negative", "training.decoding.top_k", -1, "$.training.decoding.top_k", "value out of range"),
    (
        "stop-not-list",
        "training.decoding.stop_sequences",
        ";",
        "$.training.decoding.stop_sequences",
        "wrong type",
    ),
    (
        "grammar-type-bad",
        "training.decoding.grammar_type",
        "xml",
        "$.training.decoding.grammar_type",
        "value does not match the required format",
    ),
    (
        "grammar-file-missing",
        "training.decoding.grammar_file",
        "missing.gbnf",
        "$.training.decoding.grammar_file",
        "referenced file does not exist",
    ),
    (
        "max-seq-length-small",
        "training.config.max_seq_length",
        8,
        "$.training.config.max_seq_length",
        "value out of range",
    ),
    (
        "learning-rate-zero",
        "training.config.learning_rate",
        0,
        "$.training.config.learning_rate",
        "value out of range",
    ),
    (
        "learning-rate-typo",
        "training.config.lerning_rate",
        0.001,
        "$.training.config.lerning_rate",
        "unknown key 'lerning_rate'; did you mean 'learning_rate'?",
    ),
    ("bf16-string", "training.config.bf16", "yes", "$.training.config.bf16", "value not allowed"),
    (
        "optimizer-unknown",
        "training.config.optimizer.type",
        "sgd",
        "$.training.config.optimizer.type",
        "value not allowed",
    ),
    (
        "warmup-both",
        "training.config.warmup_steps",
        10,
        "$.training.config.warmup_ratio",
        "give warmup_steps or warmup_ratio, not both",
    ),
    (
        "weight-zero",
        "training.dataset.datasets[0].weight",
        0,
        "$.training.dataset.datasets[0].weight",
        "value out of range",
    ),
    (
        "share-over-half",
        "training.dataset.datasets[1].share",
        0.6,
        "$.training.dataset.datasets[1].share",
        "value out of range",
    ),
    (
        "share-beside-weight",
        "training.dataset.datasets[0].share",
        0.05,
        "$.training.dataset.datasets[0].weight",
        "a source with a share has no weight",
    ),
    (
        "dataset-missing-file",
        "training.dataset.datasets[1].path",
        "nope.jsonl",
        "$.training.dataset.datasets[1].path",
        "referenced file does not exist",
    ),
    (
        "dataset-bad-format",
        "training.dataset.datasets[0].format",
        "xlsx",
        "$.training.dataset.datasets[0].format",
        "value not allowed",
    ),
    (
        "dataset-path-and-datasets",
        "training.dataset.path",
        "train.jsonl",
        "$.training.dataset",
        "give either path or datasets[]",
    ),
    (
        "on-error-bad",
        "training.dataset.on_error",
        "ignore",
        "$.training.dataset.on_error",
        "value not allowed",
    ),
    (
        "routing-bad-regex",
        "routing.patterns",
        ["(unclosed"],
        "$.routing.patterns[0]",
        "invalid regular expression: missing ) at position 9",
    ),
    ("routing-threshold-high", "routing.threshold", 2, "$.routing.threshold", "value out of range"),
    ("readme-missing", "readme", "NOPE.md", "$.readme", "referenced file does not exist"),
    (
        "eval-format-bad",
        "evaluation.sets[0].format",
        "squad",
        "$.evaluation.sets[0].format",
        "value not allowed",
    ),
    ("capabilities-not-strings", "capabilities", [1], "$.capabilities[0]", "wrong type"),
    ("perf-negative", "perf.vram_mb_overhead", -1, "$.perf.vram_mb_overhead", "value out of range"),
]


@pytest.mark.parametrize(("path", "value", "error_path", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_manifest_reports_exact_path_and_message(
    tmp_path: Path, path: str, value: object, error_path: str, message: str
) -> None:
    manifest = write_manifest(tmp_path, mutate(load_valid(), path, value))
    report, _ = validate_manifest(manifest)
    assert not report.ok
    assert [(p.path, p.message) for p in report.errors] == [(error_path, message)]


def test_there_are_at_least_forty_cases() -> None:
    assert len({c[0] for c in CASES}) >= 40


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    data = mutate(load_valid(), "training.decoding.temperature", -1)
    data = mutate(data, "training.config.lerning_rate", 1)
    data = mutate(data, "base_models[0].adapters[0].r", 0)
    report, _ = validate_manifest(write_manifest(tmp_path, data))
    assert [p.path for p in report.errors] == [
        "$.base_models[0].adapters[0].r",
        "$.training.config.lerning_rate",
        "$.training.decoding.temperature",
    ]


def test_problem_carries_expected_and_found(tmp_path: Path) -> None:
    report, _ = validate_manifest(write_manifest(tmp_path, mutate(load_valid(), "training.decoding.top_p", 1.5)))
    (problem,) = report.errors
    assert (problem.expected, problem.found) == ("a value ≤ 1", "number 1.5")
    assert problem.render() == "$.training.decoding.top_p: value out of range (expected a value ≤ 1; found number 1.5)"


def test_ia3_rules(tmp_path: Path) -> None:
    data = mutate(
        load_valid(),
        "base_models[0].adapters[0]",
        {"type": "ia3", "r": 4, "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]},
    )
    report, _ = validate_manifest(write_manifest(tmp_path, data))
    assert [(p.path, p.message) for p in report.errors] == [
        (
            "$.base_models[0].adapters[0].feedforward_modules",
            "feedforward_modules must be a subset of target_modules",
        ),
        ("$.base_models[0].adapters[0].r", "IA³ adapters take no rank or alpha; remove it"),
    ]


def test_dora_alpha_warning_is_not_an_error(tmp_path: Path) -> None:
    report, _ = validate_manifest(
        write_manifest(tmp_path, mutate(load_valid(), "base_models[0].adapters[0].alpha", 12))
    )
    assert report.ok
    assert [(p.path, p.message) for p in report.warnings] == [
        ("$.base_models[0].adapters[0].alpha", "DoRA usually uses alpha = 2·r"),
        ("$.perf", "perf is measured by expert-cli package on the packaging machine; values written here are replaced"),
    ] + [
        (
            f"$.runtime.{name}",
            "informational for other runtimes: expertkit ships it as written but neither reads nor checks it",
        )
        for name in ("attention_kernel", "candle_compatible", "requires_kv_cache_persistence")
    ]


def test_a_hand_written_perf_is_a_warning_and_none_is_silent(tmp_path: Path) -> None:
    data = load_valid()
    data.pop("perf")
    data.pop("runtime")
    report, _ = validate_manifest(write_manifest(tmp_path, data))
    assert report.ok and report.warnings == []


def test_unsafe_target_allowed_explicitly(tmp_path: Path) -> None:
    data = mutate(load_valid(), "base_models[0].adapters[0].target_modules", ["q_proj", "q_norm"])
    data = mutate(data, "base_models[0].adapters[0].allow_unsafe_targets", True)
    report, _ = validate_manifest(write_manifest(tmp_path, data))
    assert report.ok


def test_v1_paths_are_reported_in_v1_shape(tmp_path: Path) -> None:
    data = mutate(load_valid("v1_minimal.json"), "adapters[0].alpha", DELETE)
    report, _ = validate_manifest(write_manifest(tmp_path, data))
    assert [(p.path, p.message) for p in report.errors] == [("$.adapters[0].alpha", "LoRA needs alpha")]


def test_colliding_model_names_are_refused(tmp_path: Path) -> None:
    data = load_valid("v2_multi_model.json")
    data = mutate(data, "base_models[1].name", "smollm2_135m_instruct")
    report, _ = validate_manifest(write_manifest(tmp_path, data))
    assert [p.path for p in report.errors] == ["$.base_models[1].name"]
    assert "would overwrite each other" in report.errors[0].message


def test_a_tools_contract_must_place_the_question_and_should_place_tool_output(tmp_path: Path) -> None:
    data = load_valid()
    data.pop("perf")
    data.pop("runtime")
    tools = {"user_template": "Functions: {functions}", "result_template": "done", "call_format": "list"}
    data["training"]["decoding"]["tools"] = tools
    report, _ = validate_manifest(write_manifest(tmp_path, data))
    assert [(p.path, p.message) for p in report.errors] == [
        ("$.training.decoding.tools.user_template", "has no {question}")
    ]
    assert [p.path for p in report.warnings] == ["$.training.decoding.tools.result_template"]
    data["training"]["decoding"]["tools"] = {"call_format": "tuple"}
    report, _ = validate_manifest(write_manifest(tmp_path, data))
    assert [p.path for p in report.errors] == ["$.training.decoding.tools.call_format"]
