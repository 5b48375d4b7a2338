"""Typed manifest sections: adapters, soft prompts, training, decoding, routing, evaluation.

Field constraints here (``ge``, ``gt``, patterns, enums) are structural and end up in the JSON
Schema. Rules that relate several fields (IA³ takes no rank, files exist, target modules exist
in the model) are semantic and live in :mod:`expertkit.manifest.checks`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from expertkit.manifest.base import Section, unset_means
from expertkit.set_formats import EvalFormat

AdapterType = Literal["lora", "dora", "ia3", "lokr"]
DatasetFormat = Literal["jsonl", "json", "huggingface", "csv", "parquet"]
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
    """The soft prompt's name (its weights file is <name>.safetensors)."""
    num_virtual_tokens: int = Field(ge=1)
    """How many virtual tokens it prepends."""
    init: Literal["TEXT", "RANDOM"] = "RANDOM"
    """How it starts: random, or from the embeddings of init_text."""
    init_text: str | None = None
    """Text whose token embeddings initialise it (init: text)."""


class RopeScaling(Section):
    """RoPE scaling parameters (object form; a bare string such as 'yarn-128k' is also accepted)."""

    type: str = Field(min_length=1)
    """The RoPE scaling method (linear, dynamic, yarn, llama3 ...)."""
    factor: float = Field(gt=0)
    """How many times the original context to reach."""
    original_max_position_embeddings: int | None = Field(default=None, ge=1)
    """The context the model was trained with."""
    max_position_embeddings: int | None = Field(default=None, ge=1)
    """The context to reach."""
    fine_grained: bool | None = None
    """Method-specific flag (transformers' rope_scaling)."""
    low_freq_factor: float | None = None
    """llama3 scaling: low-frequency factor."""
    high_freq_factor: float | None = None
    """llama3 scaling: high-frequency factor."""
    attention_factor: float | None = None
    """yarn scaling: attention factor."""
    beta_fast: float | None = None
    """yarn scaling: beta_fast."""
    beta_slow: float | None = None
    """yarn scaling: beta_slow."""


class MuonSettings(Section):
    hidden_lr: float = Field(default=0.02, gt=0, description="LR for 2-D hidden weight matrices.")
    aux_lr: float = Field(default=3e-4, gt=0, description="AdamW LR for every other parameter.")
    momentum: float = Field(default=0.95, ge=0, lt=1)
    """Muon's momentum."""


class OptimizerConfig(Section):
    type: Literal["adamw", "muon", "paged_adamw_8bit"] = "adamw"
    """adamw, adamw_8bit, muon or another registered optimizer."""
    betas: list[float] | None = Field(default=None, min_length=2, max_length=2)
    """Adam's beta1 and beta2."""
    eps: float | None = Field(default=None, gt=0)
    """Adam's epsilon."""
    muon: MuonSettings | None = None
    """Settings of the Muon optimizer."""


class LossWeighting(Section):
    """WeFT-style weighted loss mask: control tokens may weigh more than ordinary tokens."""

    default: float = Field(default=1.0, gt=0)
    """Loss weight of an ordinary trained token."""
    token_weights: dict[str, float] = Field(
        default_factory=dict, description="Token text (e.g. '<|im_end|>') → loss weight."
    )


class Selection(Section):
    """Best-checkpoint guards (MyPT's GOLD system): the published checkpoint is the lowest eval loss;
    the guards judge the trend, and stop a run that overfits."""

    patience: int = Field(default=3, ge=1, description="Stop after this many consecutive eval-loss rises.")
    gap_patience: int = Field(
        default=3,
        ge=1,
        description="Overfitting guard: stop when the eval–train gap (smoothed train loss) grew this many "
        "evaluations in a row while the eval loss did not improve.",
    )
    max_eval_train_ratio: float | None = Field(
        default=None,
        gt=1,
        description="Opt-in: a checkpoint whose eval/train loss ratio exceeds this is never published (the ratio "
        "is always reported; train and eval losses come from different mixes, so its level alone is no verdict).",
    )


class TrainingConfig(Section):
    epochs: float | None = unset_means(1.0, gt=0)
    """Passes over the training data."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps (overrides epochs)."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Peak learning rate; unset: 2e-4 for an adapter, 2e-5 for a full fine-tune."""
    batch_size: int | None = unset_means(8, ge=1)
    """Packed rows per step on each device."""
    gradient_accumulation_steps: int | None = unset_means(1, ge=1)
    """Steps whose gradients add up before each update (effective batch = batch_size × this)."""
    max_seq_length: int | None = unset_means(1024, ge=16)
    """Tokens per packed row; longer examples are dropped or their prompt cut."""
    packing: bool | None = unset_means(True)
    """Pack several examples per row (best-fit decreasing), each isolated by its position ids."""
    use_sdpa: bool | None = unset_means(True)
    """Use PyTorch's scaled-dot-product attention."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Steps of linear learning-rate warm-up."""
    warmup_ratio: float | None = unset_means(0.03, ge=0, lt=1)
    """Warm-up as a share of all steps (when warmup_steps is not set)."""
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] | None = unset_means("cosine")
    """Learning-rate schedule after warm-up: cosine, linear or constant."""
    weight_decay: float | None = unset_means(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float | None = unset_means(1.0, gt=0)
    """Clip the gradient norm to this."""
    optimizer: OptimizerConfig | Literal["adamw", "muon", "paged_adamw_8bit"] | None = unset_means("adamw")
    """The optimizer, by name or with settings."""
    neftune_alpha: float | None = Field(default=None, ge=0)
    """NEFTune noise on input embeddings during training; unset turns it off."""
    loss_weighting: LossWeighting | None = None
    """Per-token loss weights (control tokens may count more)."""
    quantization: Literal["none", "int8", "int4"] | None = unset_means("none")
    """Train on a quantized base (QLoRA, CUDA only): none, int8 or int4."""
    bf16: bool | Literal["auto"] | None = unset_means("auto")
    """bf16 autocast: auto uses it where the device runs it natively."""
    gradient_checkpointing: bool | None = unset_means(False)
    """Recompute activations in the backward pass: far less memory, about a third slower."""
    dataloader_num_workers: int | None = unset_means(0, ge=0)
    """Data-loading worker processes."""
    dataloader_pin_memory: bool | None = unset_means(False)
    """Pin host memory for faster copies to a GPU."""
    dataloader_prefetch_factor: int | None = Field(default=None, ge=1)
    """Batches each worker loads ahead."""
    dataloader_persistent_workers: bool | None = unset_means(False)
    """Keep data-loading workers between epochs."""
    eval_steps: int | None = Field(default=None, ge=1)
    """Evaluate and checkpoint every N steps; default: 2 to 10 times a run."""
    save_steps: int | None = Field(default=None, ge=1)
    """Checkpoint every N steps; every checkpoint is evaluated, so this is eval_steps by another name."""
    logging_steps: int | None = unset_means(10, ge=1)
    """Log loss and learning rate every N steps."""
    seed: int | None = unset_means(42, ge=0)
    """Seed of initialisation, shuffling and dropout."""
    full_finetune: bool | None = unset_means(
        False, description="Train every weight of the base model instead of an adapter (small models)."
    )
    selection: Selection | None = None
    """Which checkpoint is published: the best eval loss, guarded against overfitting."""
    report_to: list[Literal["tensorboard"]] | None = Field(
        default=None, description="Extra loggers through the Trainer's report_to (TensorBoard needs tensorboard)."
    )


class FieldMapping(Section):
    """How source fields map onto a conversation: a `messages` list, columns, or a template."""

    messages: str | None = Field(default=None, description="Field holding a list of {role, content}.")
    system: str | None = None
    """Field holding a system prompt."""
    instruction: str | None = None
    """Alpaca-style instruction field."""
    input: str | None = None
    """Alpaca-style input field, appended to the instruction."""
    output: str | None = None
    """Alpaca-style answer field."""
    prompt_template: str | None = Field(
        default=None, description="Python format string over source fields, e.g. '{schema}\\n{question}'."
    )
    response: str | None = Field(default=None, description="Field holding the answer with prompt_template.")


class DatasetSource(Section):
    path: str = Field(min_length=1)
    """The source's data file or directory, relative to the manifest."""
    format: DatasetFormat | None = None
    """jsonl, json, csv, parquet or huggingface; default: from the file suffix."""
    field_mapping: FieldMapping | None = None
    """How this source's records become conversations; default: detected."""
    weight: float = Field(default=1.0, gt=0)
    """Relative share of this source in the training mix."""
    share: float | None = Field(default=None, gt=0, le=0.5)
    """A fixed fraction of the training mix whatever the source's size (drawn with repeats when it is
    small), instead of weight: e.g. 0.03 of general text replayed against forgetting. In a curriculum,
    of each phase that lists the source."""
    name: str | None = None
    """The source's name (for phases and reports); default: the file name."""


class Augmentation(Section):
    schema_injection_prob: float | None = Field(default=None, ge=0, le=1)
    """Probability of adding the schema to a prompt that lacks it (SQL)."""
    table_aliases: bool | None = None
    """Rewrite table aliases in SQL targets (T1, T2 ...) for variety."""
    comment_stripping: bool | None = None
    """Drop comments from code targets."""
    case_normalization: Literal["preserve", "lower", "upper"] | None = None
    """Normalise the case of SQL keywords in targets."""


class SplitConfig(Section):
    eval_size: float = Field(default=0.05, gt=0, description="Fraction (<1) or count of examples.")
    seed: int = Field(default=0, ge=0)
    """Seed of the train/eval split (the same data always splits the same way)."""


class NearDedup(Section):
    threshold: float = Field(default=0.9, gt=0, le=1)
    """Jaccard similarity above which two records are near duplicates (MinHash)."""
    num_perm: int = Field(default=128, ge=16)
    """MinHash permutations (more: slower, more exact)."""


class Preprocessing(Section):
    normalize_whitespace: bool = False
    """Collapse runs of spaces and trim every message."""
    dedup: bool = False
    """Drop exact duplicate conversations."""
    near_dedup: NearDedup | None = None
    """Drop near-duplicate conversations (MinHash)."""
    min_tokens: int | None = Field(default=None, ge=1)
    """Drop examples shorter than this many tokens."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Drop examples longer than this many tokens."""
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
    """One data file or directory, relative to the manifest (or use datasets for several)."""
    format: DatasetFormat | None = None
    """jsonl, json, csv, parquet or huggingface; default: from the file suffix."""
    field_mapping: FieldMapping | None = None
    """How a record's fields become a conversation; default: detected (messages, ShareGPT, Alpaca ...)."""
    datasets: list[DatasetSource] | None = Field(default=None, min_length=1)
    """Several sources mixed by weight, instead of path."""
    split: SplitConfig | None = None
    """How the held-out evaluation split is drawn."""
    augmentation: Augmentation | None = None
    """Target-side augmentations (SQL-oriented)."""
    preprocessing: Preprocessing | None = None
    """Whitespace, deduplication, length limits and a preprocess() hook."""
    on_error: Literal["fail", "skip"] = "fail"
    """fail: any bad record stops preparation; skip: bad records are dropped and counted."""
    overflow: Literal["drop", "truncate_prompt"] = Field(
        default="drop",
        description="Examples longer than max_seq_length: drop them, or cut the prompt from the left.",
    )
    special_tokens: list[str] = Field(
        default_factory=list, description="Control tokens added to the tokenizer, e.g. '<tool_call>'."
    )
    checks: DataChecks | None = None
    """The pre-training validators: the trained-token band and overrides."""
    seed: int = Field(default=0, ge=0, description="Seed of the weighted mix and its shuffle.")
    num_proc: int | None = Field(default=None, ge=1, description="Tokenisation processes (default: by size).")


TOOLS_SYSTEM = 'You call functions. Answer with the JSON call only: {"name": ..., "arguments": {...}}.'
ToolCallFormat = Literal["object", "list", "object-or-list"]


class ToolsContract(Section):
    """How the expert was trained to see tools and emit calls. ``expert-cli serve`` renders an OpenAI
    ``tools`` request this way and decodes a call under a grammar built from the tools' schemas."""

    system: str | None = unset_means(TOOLS_SYSTEM)
    """The system line before everything else; a client's own system message follows it."""
    user_template: str | None = unset_means("Functions: {functions}\n\n{question}", pattern=r"\{functions\}")
    """The first user turn: {functions} is the tool list as compact JSON, {question} the user's text."""
    schema_style: Literal["json-schema", "bfcl"] | None = unset_means("json-schema")
    """How parameter types are written in the tool list: JSON Schema, or BFCL's names (dict, float)."""
    call_format: ToolCallFormat | None = unset_means("object-or-list")
    """A call is one {"name", "arguments"} object; a list of them; or one object, a list when parallel."""
    result_template: str | None = unset_means("Result of {name}: {content}")
    """A tool result in the history, shown as a user turn: {name} is the tool, {content} its output."""


class DecodingConfig(Section):
    temperature: float | None = unset_means(0.0, ge=0)
    """Sampling temperature; 0 decodes greedily."""
    top_p: float | None = unset_means(1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens with this much probability."""
    top_k: int | None = unset_means(0, ge=0)
    """Sample among the k likeliest tokens; 0 keeps all."""
    max_tokens: int | None = unset_means(256, ge=1)
    """Most tokens to generate per answer."""
    repetition_penalty: float | None = unset_means(1.0, gt=0)
    """Penalty on tokens already seen; 1 turns it off."""
    seed: int | None = Field(default=None, ge=0)
    """Seed for reproducible sampling."""
    stop_sequences: list[str] | None = None
    """Strings that end an answer (not included in it)."""
    use_grammar: bool | None = unset_means(False)
    """Constrain every generated token by the grammar (grammar_file or grammar_type)."""
    grammar_type: str | None = Field(default=None, pattern=r"^(json|json_schema|gbnf|cypher|sql(-[a-z0-9]+)?)$")
    """A shipped grammar: sql-<dialect>, cypher, json or json_schema."""
    grammar_file: str | None = Field(default=None, min_length=1)
    """Your own grammar (GBNF, or Lark with .lark), relative to the manifest."""
    json_schema: dict[str, Any] | None = None
    """The JSON Schema answers must follow (grammar_type or validation json_schema)."""
    validation: Literal["none", "parser", "parser-strict", "json", "json_schema", "cypher", "tsc"] | None = unset_means(
        "none"
    )
    """The output validator run after generation: parser, parser-strict, json, json_schema, cypher or tsc."""
    retries: int | None = unset_means(0, ge=0)
    """Resample an invalid answer this many times with another seed."""
    tools: ToolsContract | None = None
    """The function-calling contract: the prompt and call format a server's ``tools`` API follows."""


class PhaseSparring(Section):
    """Sparring before a phase: the adapter published so far answers training items of an evaluation set
    under its contract, and its mistakes become this phase's data (``expert-cli spar``)."""

    into: str = Field(min_length=1)
    """The training.dataset.datasets source (a .jsonl path) the sparring conversations are written to."""
    set: str = Field(min_length=1)
    """The evaluation.sets entry whose training items are answered (its split "train" only)."""
    sample: int | None = Field(default=None, ge=1)
    """A seeded random sample of this many training items (default: all)."""
    kinds: list[Literal["identify", "correct", "confirm"]] = Field(
        default=["identify", "correct", "confirm"], min_length=1
    )
    """Which example kinds to write."""
    with_reason: bool = False
    """Add the checker's reason to "It is incorrect"."""
    confirm_per_wrong: float = Field(default=1.0, ge=0)
    """Confirm examples (items answered correctly) per wrong answer."""


class TrainingPhase(Section):
    """One phase of a curriculum (MyPT's phased SFT): its own sources, learning rate and length,
    a replay share of earlier phases' data, and the evaluation gate after it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """The phase's name (its weights go to weights/<model>/phases/<NN>-<name>/)."""
    datasets: list[str] = Field(min_length=1, description="Names of training.dataset.datasets sources to train on.")
    learning_rate: float | None = Field(default=None, gt=0)
    """This phase's learning rate (default: training.config's)."""
    epochs: float | None = Field(default=None, gt=0)
    """This phase's passes over its data."""
    max_steps: int | None = Field(default=None, ge=1)
    """This phase's optimizer steps (overrides epochs)."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """This phase's learning-rate warm-up steps (default: training.config's). 0 starts the phase at its
    full rate: a phase that goes on from a trained adapter need not warm up again."""
    replay: float = Field(
        default=0.0, ge=0, lt=1, description="Share of this phase's examples drawn from earlier phases' sources."
    )
    gate: bool = Field(default=True, description="Run evaluation.thresholds after this phase; stop when missed.")
    spar: PhaseSparring | None = None
    """Before this phase: spar with the adapter trained so far and write its mistakes into a source."""


class Training(Section):
    config: TrainingConfig | None = None
    """Hyperparameters: steps, learning rate, batch, precision, checkpoints."""
    dataset: DatasetConfig | None = None
    """The training data: sources, mapping, split, preprocessing, checks."""
    decoding: DecodingConfig | None = None
    """The decoding contract the expert ships with: sampling, stops, grammar, validator."""
    phases: list[TrainingPhase] | None = Field(
        default=None, min_length=1, description="A curriculum: phases trained in order, each from the last's adapter."
    )


class Routing(Section):
    keywords: list[str] = Field(default_factory=list)
    """Words that point to this expert (whole words, any case)."""
    patterns: list[str] = Field(default_factory=list, description="Regular expressions (Python syntax).")
    examples: list[str] = Field(default_factory=list, description="Example prompts for similarity routing.")
    priority: int = 0
    """Tie-breaker between experts (higher wins)."""
    threshold: float | None = Field(default=None, ge=0, le=1)
    """Least similarity score for model 'auto' to pick this expert."""


class PerfMachine(Section):
    """Where and how ``perf`` was measured."""

    device: str | None = Field(default=None, max_length=64)
    """Torch device: cpu, cuda, cuda:1, ..."""
    device_name: str | None = Field(default=None, max_length=200)
    """The GPU's name, or the CPU's architecture."""
    cpu_count: int | None = Field(default=None, ge=0)
    """Logical CPUs of the machine."""
    platform: str | None = Field(default=None, max_length=200)
    """Operating system and version."""
    dtype: str | None = Field(default=None, max_length=32)
    """Weights dtype the runtime decoded in."""
    torch: str | None = Field(default=None, max_length=64)
    """torch version."""
    expertkit: str | None = Field(default=None, max_length=64)
    """expertkit version that measured."""
    prompt_tokens: int | None = Field(default=None, ge=0)
    """Prompt length of the fixed measurement request."""
    new_tokens: int | None = Field(default=None, ge=0)
    """Tokens generated per request (end tokens and stops ignored)."""
    measured_at: str | None = Field(default=None, max_length=40)
    """When, in UTC (ISO 8601)."""


class Perf(Section):
    """Measured by ``expert-cli package`` on the packaging machine (``--no-measure`` leaves it out);
    the packaged manifest carries the measurement, and values written here by hand are replaced."""

    latency_ms_overhead: float | None = Field(default=None, ge=0)
    """Added time per request against the base model, in milliseconds (batch 1, greedy)."""
    vram_mb_overhead: float | None = Field(default=None, ge=0)
    """CUDA memory allocated by attaching the expert and building its decoder, in MiB (CUDA only)."""
    memory_mb_overhead: float | None = Field(default=None, ge=0)
    """Memory the expert's tensors hold while it decodes (adapter, merged decoder weights), in MiB."""
    supported_batch_sizes: list[int] | None = Field(default=None, max_length=16)
    """Batch sizes the expert was measured with (the keys of tokens_per_s)."""
    tokens_per_s: dict[str, float] | None = Field(default=None, max_length=16)
    """Decode throughput of the expert by batch size (all streams, wall clock)."""
    base_tokens_per_s: float | None = Field(default=None, ge=0)
    """Decode throughput of the base model alone at batch size 1, for comparison."""
    adapter_parameters: int | None = Field(default=None, ge=0)
    """Parameters the adapter adds."""
    adapter_bytes: int | None = Field(default=None, ge=0)
    """Size of the adapter's weights file."""
    measured_on: PerfMachine | None = None
    """The machine and request shape of the measurement."""


class Runtime(Section):
    """How expertkit's decoder runs this expert (``quantize``), and claims for other runtimes, shipped
    as written: expertkit neither reads nor checks those (``validate`` says so)."""

    quantize: Literal["none", "int8", "int4"] | None = None
    """Weight-only quantisation of the merged decoder (CPU): none, int8 (per-channel) or int4 (groups
    of 32). A --quantize flag wins; unset: expertkit's default (none). Check the quality first:
    expert-cli eval --quantize int8 against none on the expert's own sets."""

    decoder: Literal["lean", "onnx", "native"] | None = None
    """What runs expertkit's decode steps on a CPU: lean (PyTorch), onnx (ONNX Runtime, a graph
    built once per expert and quantisation and cached; install builds it) or native (expertkit's C
    decoder over Q4_1/Q8_0 weight blocks, int4 unless quantize says int8; install compiles it). A
    --decoder flag wins; unset: lean. onnx and native cover LoRA and DoRA experts on Llama/Qwen
    bases read from their files; others decode lean."""

    candle_compatible: bool | None = None
    """Whether the adapter loads in candle (informational)."""
    requires_kv_cache_persistence: bool | None = None
    """Whether answers need the KV cache kept between turns (informational)."""
    attention_kernel: str | None = None
    """Attention kernel the expert was measured with (informational)."""


class Constraints(Section):
    max_chain: int | None = Field(default=None, ge=1)
    """Most experts that may answer one request in a chain; always met: one expert answers each request."""
    load_order: int | None = None
    """Where this expert goes when several are loaded together, lower first (routing ties, listing order)."""
    requires: list[str] | None = None
    """Experts that must be loaded with this one (chat, serve and eval refuse to load it alone)."""
    incompatible_with: list[str] | None = None
    """Experts that must not be loaded with this one (chat, serve and eval refuse to load both)."""


class EvalSet(Section):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The set's name; its results are written as <name>.json, so it is a plain file name.",
    )
    path: str = Field(min_length=1)
    """The set's file, relative to the manifest."""
    format: EvalFormat
    """The set's format: spider, geoquery, defog, bfcl, text2cypher or jsonl."""
    answers: str | None = None
    """The companion file the format needs (tables.json, possible answers, a database)."""
    split: str | None = Field(
        default=None, description="Only items of this split (GeoQuery 'test', 'heldout' for BFCL and text2cypher)."
    )
    limit: int | None = Field(default=None, ge=1)
    """Evaluate only the first N items."""


class Threshold(Section):
    min: float | None = None
    """The least score the expert must reach."""
    max_regression: float | None = Field(default=None, ge=0)
    """The most the expert may fall below the base model."""
    buckets: dict[str, Threshold] | None = None
    """Thresholds per bucket (difficulty, category, database ...)."""


class Forgetting(Section):
    """How far the expert drifted from its base on general prompts (``eval --forgetting``), and its gate."""

    prompts: str | None = None
    """A JSONL of {"prompt", "bucket"} lines (your out-of-domain set); default: expertkit's 62 general prompts."""
    max_tokens: int = Field(default=32, ge=1, le=512)
    """Tokens the base answers with (the KL is taken over them)."""
    max_kl: float | None = Field(default=None, gt=0)
    """Gate: the most mean per-token KL(base ‖ expert) allowed."""
    min_match: float | None = Field(default=None, ge=0, le=1)
    """Gate: the least share of prompts the expert answers as the base does."""


class Evaluation(Section):
    sets: list[EvalSet] = Field(default_factory=list)
    """The evaluation sets expert-cli eval runs."""
    metrics: list[str] = Field(default_factory=list)
    """Metric names to report."""
    thresholds: dict[str, Threshold] = Field(default_factory=dict)
    """The gate: per metric, a minimum and the most regression against the base model."""
    forgetting: Forgetting | None = None
    """Forgetting measured against the base model on general prompts, and its gate."""
