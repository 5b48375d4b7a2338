"""Typed manifest sections: adapters, soft prompts, training, decoding, routing, evaluation.

Field constraints here (``ge``, ``gt``, patterns, enums) are structural and end up in the JSON
Schema. Rules that relate several fields (IA³ takes no rank, files exist, target modules exist
in the model) are semantic and live in :mod:`expertkit.manifest.checks`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from expertkit.manifest.base import Section

AdapterType = Literal["lora", "dora", "ia3", "lokr"]
DatasetFormat = Literal["jsonl", "json", "huggingface", "csv", "parquet"]
EvalFormat = Literal["spider", "geoquery", "defog", "bfcl", "text2cypher", "jsonl"]
ModuleName = str


class Adapter(Section):
    """One parameter-efficient adapter on a base model."""

    type: AdapterType = Field(description="Adapter method: lora, dora, ia3 or lokr.")
    r: int | None = Field(default=None, ge=1, description="Rank (LoRA, DoRA, LoKr). Same as `rank`.")
    rank: int | None = Field(default=None, ge=1, description="Alias of `r`; give one of the two.")
    alpha: float | None = Field(default=None, gt=0, description="Scaling numerator (LoRA, DoRA, LoKr).")
    target_modules: list[ModuleName] = Field(min_length=1, description="Leaf names of modules to adapt.")
    feedforward_modules: list[ModuleName] | None = Field(
        default=None, description="IA³ only: the subset of target_modules that are feed-forward layers."
    )
    dropout: float | None = Field(default=None, ge=0, lt=1, description="Adapter dropout probability.")
    scaling: str | None = Field(default=None, description="Informational: 'standard', 'dora', 'learned'.")
    allow_unsafe_targets: bool = Field(
        default=False, description="Allow norms, embeddings and the LM head as targets (normally refused)."
    )


class SoftPrompt(Section):
    """A trainable prompt of virtual tokens (PEFT prompt tuning)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    num_virtual_tokens: int = Field(ge=1)
    init: Literal["TEXT", "RANDOM"] = "RANDOM"
    init_text: str | None = None


class RopeScaling(Section):
    """RoPE scaling parameters (object form; a bare string such as 'yarn-128k' is also accepted)."""

    type: str = Field(min_length=1)
    factor: float = Field(gt=0)
    original_max_position_embeddings: int | None = Field(default=None, ge=1)
    max_position_embeddings: int | None = Field(default=None, ge=1)
    fine_grained: bool | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None


class MuonSettings(Section):
    hidden_lr: float = Field(default=0.02, gt=0, description="LR for 2-D hidden weight matrices.")
    aux_lr: float = Field(default=3e-4, gt=0, description="AdamW LR for every other parameter.")
    momentum: float = Field(default=0.95, ge=0, lt=1)


class OptimizerConfig(Section):
    type: Literal["adamw", "muon", "paged_adamw_8bit"] = "adamw"
    betas: list[float] | None = Field(default=None, min_length=2, max_length=2)
    eps: float | None = Field(default=None, gt=0)
    muon: MuonSettings | None = None


class LossWeighting(Section):
    """WeFT-style weighted loss mask: control tokens may weigh more than ordinary tokens."""

    default: float = Field(default=1.0, gt=0)
    token_weights: dict[str, float] = Field(
        default_factory=dict, description="Token text (e.g. '<|im_end|>') → loss weight."
    )


class Selection(Section):
    """Best-checkpoint guards (MyPT's GOLD system)."""

    max_eval_train_ratio: float = Field(
        default=1.5, gt=1, description="A checkpoint whose eval/train loss ratio exceeds this is overfit."
    )
    patience: int = Field(default=3, ge=1, description="Stop after this many consecutive eval-loss rises.")


class TrainingConfig(Section):
    epochs: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    gradient_accumulation_steps: int | None = Field(default=None, ge=1)
    max_seq_length: int | None = Field(default=None, ge=16)
    packing: bool | None = None
    use_sdpa: bool | None = None
    warmup_steps: int | None = Field(default=None, ge=0)
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    max_grad_norm: float | None = Field(default=None, gt=0)
    optimizer: OptimizerConfig | Literal["adamw", "muon", "paged_adamw_8bit"] | None = None
    neftune_alpha: float | None = Field(default=None, ge=0)
    loss_weighting: LossWeighting | None = None
    quantization: Literal["none", "int8", "int4"] | None = None
    bf16: bool | Literal["auto"] | None = None
    gradient_checkpointing: bool | None = None
    dataloader_num_workers: int | None = Field(default=None, ge=0)
    dataloader_pin_memory: bool | None = None
    dataloader_prefetch_factor: int | None = Field(default=None, ge=1)
    dataloader_persistent_workers: bool | None = None
    eval_steps: int | None = Field(default=None, ge=1)
    save_steps: int | None = Field(default=None, ge=1)
    logging_steps: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0)
    full_finetune: bool | None = Field(
        default=None, description="Train every weight of the base model instead of an adapter (small models)."
    )
    selection: Selection | None = None
    report_to: list[Literal["tensorboard"]] | None = Field(
        default=None, description="Extra loggers through the Trainer's report_to (TensorBoard needs tensorboard)."
    )


class FieldMapping(Section):
    """How source fields map onto a conversation: a `messages` list, columns, or a template."""

    messages: str | None = Field(default=None, description="Field holding a list of {role, content}.")
    system: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    prompt_template: str | None = Field(
        default=None, description="Python format string over source fields, e.g. '{schema}\\n{question}'."
    )
    response: str | None = Field(default=None, description="Field holding the answer with prompt_template.")


class DatasetSource(Section):
    path: str = Field(min_length=1)
    format: DatasetFormat | None = None
    field_mapping: FieldMapping | None = None
    weight: float = Field(default=1.0, gt=0)
    name: str | None = None


class Augmentation(Section):
    schema_injection_prob: float | None = Field(default=None, ge=0, le=1)
    table_aliases: bool | None = None
    comment_stripping: bool | None = None
    case_normalization: Literal["preserve", "lower", "upper"] | None = None


class SplitConfig(Section):
    eval_size: float = Field(default=0.05, gt=0, description="Fraction (<1) or count of examples.")
    seed: int = Field(default=0, ge=0)


class NearDedup(Section):
    threshold: float = Field(default=0.9, gt=0, le=1)
    num_perm: int = Field(default=128, ge=16)


class Preprocessing(Section):
    normalize_whitespace: bool = False
    dedup: bool = False
    near_dedup: NearDedup | None = None
    min_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    hook: str | None = Field(default=None, description="Python file beside the manifest defining preprocess().")


ValidatorName = Literal["supervised_ratio", "span_count", "trained_text", "packed_layout", "label_sanity"]


class DataChecks(Section):
    """The pre-training validators: the supervised-token band and which checks to override."""

    min_supervised_ratio: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Least share of tokens trained. Catches a mask that trains nothing; short answers "
        "(labels, classes) legitimately train a few percent.",
    )
    max_supervised_ratio: float = Field(
        default=0.95, ge=0, le=1, description="Most share of tokens trained. Catches a mask that trains the prompts."
    )
    skip: list[ValidatorName] = Field(
        default_factory=list, description="Validators whose failure is reported but does not abort training."
    )


class DatasetConfig(Section):
    path: str | None = Field(default=None, min_length=1)
    format: DatasetFormat | None = None
    field_mapping: FieldMapping | None = None
    datasets: list[DatasetSource] | None = Field(default=None, min_length=1)
    split: SplitConfig | None = None
    augmentation: Augmentation | None = None
    preprocessing: Preprocessing | None = None
    on_error: Literal["fail", "skip"] = "fail"
    overflow: Literal["drop", "truncate_prompt"] = Field(
        default="drop",
        description="Examples longer than max_seq_length: drop them, or cut the prompt from the left.",
    )
    special_tokens: list[str] = Field(
        default_factory=list, description="Control tokens added to the tokenizer, e.g. '<tool_call>'."
    )
    checks: DataChecks | None = None
    seed: int = Field(default=0, ge=0, description="Seed of the weighted mix and its shuffle.")
    num_proc: int | None = Field(default=None, ge=1, description="Tokenisation processes (default: by size).")


class DecodingConfig(Section):
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    seed: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    use_grammar: bool | None = None
    grammar_type: str | None = Field(default=None, pattern=r"^(json|json_schema|gbnf|cypher|sql(-[a-z0-9]+)?)$")
    grammar_file: str | None = Field(default=None, min_length=1)
    json_schema: dict[str, Any] | None = None
    validation: Literal["none", "parser", "parser-strict", "json", "json_schema", "cypher", "tsc"] | None = None
    retries: int | None = Field(default=None, ge=0)


class TrainingPhase(Section):
    """One phase of a curriculum (MyPT's phased SFT): its own sources, learning rate and length,
    a replay share of earlier phases' data, and the evaluation gate after it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    datasets: list[str] = Field(min_length=1, description="Names of training.dataset.datasets sources to train on.")
    learning_rate: float | None = Field(default=None, gt=0)
    epochs: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    replay: float = Field(
        default=0.0, ge=0, lt=1, description="Share of this phase's examples drawn from earlier phases' sources."
    )
    gate: bool = Field(default=True, description="Run evaluation.thresholds after this phase; stop when missed.")


class Training(Section):
    config: TrainingConfig | None = None
    dataset: DatasetConfig | None = None
    decoding: DecodingConfig | None = None
    phases: list[TrainingPhase] | None = Field(
        default=None, min_length=1, description="A curriculum: phases trained in order, each from the last's adapter."
    )


class Routing(Section):
    keywords: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list, description="Regular expressions (Python syntax).")
    examples: list[str] = Field(default_factory=list, description="Example prompts for similarity routing.")
    priority: int = 0
    threshold: float | None = Field(default=None, ge=0, le=1)


class Perf(Section):
    latency_ms_overhead: float | None = Field(default=None, ge=0)
    vram_mb_overhead: float | None = Field(default=None, ge=0)
    supported_batch_sizes: list[int] | None = None


class Runtime(Section):
    candle_compatible: bool | None = None
    requires_kv_cache_persistence: bool | None = None
    attention_kernel: str | None = None


class Constraints(Section):
    max_chain: int | None = Field(default=None, ge=1)
    load_order: int | None = None
    requires: list[str] | None = None
    incompatible_with: list[str] | None = None


class EvalSet(Section):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The set's name; its results are written as <name>.json, so it is a plain file name.",
    )
    path: str = Field(min_length=1)
    format: EvalFormat
    answers: str | None = None
    split: str | None = Field(
        default=None, description="Only items of this split (GeoQuery 'test', 'heldout' for BFCL and text2cypher)."
    )
    limit: int | None = Field(default=None, ge=1)


class Threshold(Section):
    min: float | None = None
    max_regression: float | None = Field(default=None, ge=0)
    buckets: dict[str, Threshold] | None = None


class Evaluation(Section):
    sets: list[EvalSet] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=list)
    thresholds: dict[str, Threshold] = Field(default_factory=dict)
