"""Build tiny, randomly initialised causal LMs with a real tokenizer and chat template, offline.

Used by the pytest fixtures in conftest.py. A byte-level BPE tokenizer is trained in memory on a
small corpus with ChatML special tokens and SmolLM2's chat template (Qwen3's own template and
added tag tokens for the Qwen3 variant), so rendering and masking behave as with the real models
while a model is built and saved in about a second.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3 has its tag words as added (not special) tokens; the tiny Qwen3 gets the same.
QWEN3_ADDED_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
QWEN3_TEMPLATE_FILE = Path(__file__).parent / "fixtures" / "templates" / "qwen3.jinja"
CORPUS = [
    "SELECT count(*) FROM singer WHERE age > 56;",
    "CREATE TABLE head (head_ID INTEGER PRIMARY KEY, name TEXT, age INTEGER);",
    "MATCH (m:Movie) WHERE m.runtime > 120 RETURN m.title LIMIT 5",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "You are a helpful AI assistant. What is the capital of France? Paris.",
    "export function add(a: number, b: number): number { return a + b; }",
] * 20


def build_tokenizer(directory: Path, architecture: str = "llama") -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    if architecture == "qwen3":
        fast.add_tokens(QWEN3_ADDED_TOKENS)
        fast.chat_template = QWEN3_TEMPLATE_FILE.read_text(encoding="utf-8")
    else:
        fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(directory)


def build_tiny_model(directory: Path, architecture: str = "llama", seed: int = 0) -> Path:
    """Save a 2-layer random model of ``architecture`` ('llama' or 'qwen3') with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen3Config

    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(directory, architecture)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = LlamaConfig(**common) if architecture == "llama" else Qwen3Config(head_dim=16, **common)
    config.architectures = ["LlamaForCausalLM" if architecture == "llama" else "Qwen3ForCausalLM"]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory, safe_serialization=True)
    return directory
