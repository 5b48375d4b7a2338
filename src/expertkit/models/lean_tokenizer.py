"""A tokenizer for the decode path that does not import transformers.

Importing transformers costs a cold start about 0.6 s on an idle 2-core CPU (its hub client alone
pulls in an HTTP stack), while the tokenising itself is done by the Rust ``tokenizers`` library
that transformers wraps. For a model whose tokenizer is that Rust object as saved
(``tokenizer_class`` TokenizersBackend or PreTrainedTokenizerFast), this class reads the same files
transformers reads -- ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` --
and does what the runtime asks of a tokenizer: render a chat (text only), encode, decode, map ids
to tokens, list the added vocabulary and the special ids, add an expert's control tokens.

The chat template is rendered as transformers renders it (``apply_chat_template`` with
``tokenize=False``): a sandboxed Jinja environment with ``trim_blocks``, ``lstrip_blocks`` and loop
controls, transformers' ``tojson`` (no HTML escaping), ``raise_exception`` and ``strftime_now``;
messages as plain data with ``None`` values dropped and reasoning under its usual names; the
special tokens as template variables. No library offers that renderer without importing
transformers, hence this module; the tests compare it with transformers' tokenizer on the ChatML
and Qwen3 templates and on the embedded SmolLM2. Anything it cannot do the same way (a template
chosen by name, a clean-up transformers would apply) makes :func:`lean_tokenizer` return ``None``,
and the caller loads transformers' tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from expertkit.safepath import read_bounded

PLAIN_FAST_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers' names, in its order
CONFIG_LIMIT = 1 << 22
TOKENIZER_LIMIT = 1 << 28
MAX_VOCAB = 100_000
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def lean_tokenizer(model_dir: Path) -> LeanTokenizer | None:
    """The model's tokenizer without transformers, or ``None`` when transformers must load it."""
    try:
        config = json.loads(read_bounded(model_dir / "tokenizer_config.json", "tokenizer_config.json", CONFIG_LIMIT))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("tokenizer_class") not in PLAIN_FAST_CLASSES:
        return None
    template = config.get("chat_template")
    if (model_dir / "chat_template.jinja").is_file():
        template = read_bounded(model_dir / "chat_template.jinja", "chat_template.jinja", CONFIG_LIMIT).decode("utf-8")
    if template is not None and not isinstance(template, str):  # templates chosen by name: transformers picks
        return None
    if not (model_dir / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(read_bounded(model_dir / "tokenizer.json", "tokenizer.json", TOKENIZER_LIMIT).decode())
    tokenizer = LeanTokenizer(backend, config, template, str(model_dir))
    return tokenizer if _same_as_transformers(tokenizer, config) else None


def _same_as_transformers(tokenizer: LeanTokenizer, config: dict[str, Any]) -> bool:
    """Whether transformers would use the saved Rust tokenizer as it is (then so can we).

    transformers changes it on load when a special token is missing from the vocabulary (it adds
    it), when special tokens are to be split, when the config sets BOS/EOS flags (it rewrites the
    post-processor), for a vocabulary over 100k (a regex patch for some models) and when decoding
    cleans up spaces (WordPiece); a ``{% generation %}`` template needs its own Jinja extension.
    Any of these: load transformers' tokenizer instead.
    """
    backend = tokenizer.backend_tokenizer
    template = tokenizer.chat_template or ""
    return not (
        any(backend.token_to_id(token) is None for token in tokenizer.all_special_tokens)
        or config.get("split_special_tokens")
        or "add_bos_token" in config
        or "add_eos_token" in config
        or backend.get_vocab_size(with_added_tokens=False) > MAX_VOCAB
        or (config.get("clean_up_tokenization_spaces") and type(backend.model).__name__ != "BPE")
        or GENERATION_TAG.search(template)
    )


def _content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class LeanTokenizer:
    """The part of a transformers fast tokenizer the runtime uses, over the Rust tokenizer."""

    def __init__(self, backend: Any, config: dict[str, Any], chat_template: str | None, name: str) -> None:
        backend.no_padding()
        backend.no_truncation()
        self._transformers: Any = None
        self.backend_tokenizer, self.chat_template, self.name_or_path = backend, chat_template, name
        self.named = {key: _content(config.get(key)) for key in NAMED_SPECIAL}
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        self.additional = [t for t in (_content(v) for v in extra) if t is not None] if isinstance(extra, list) else []

    @property
    def bos_token(self) -> str | None:
        return self.named["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self.named["eos_token"]

    @property
    def pad_token(self) -> str | None:
        return self.named["pad_token"]

    @property
    def unk_token(self) -> str | None:
        return self.named["unk_token"]

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        named: dict[str, Any] = {key: value for key, value in self.named.items() if value is not None}
        return named | ({"additional_special_tokens": list(self.additional)} if self.additional else {})

    @property
    def all_special_tokens(self) -> list[str]:
        tokens = [t for t in self.named.values() if t is not None] + self.additional
        return list(dict.fromkeys(tokens))

    @property
    def all_special_ids(self) -> list[int]:
        ids = (self.backend_tokenizer.token_to_id(t) for t in self.all_special_tokens)
        return [i for i in ids if i is not None]

    def __len__(self) -> int:
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=True))

    def get_added_vocab(self) -> dict[str, int]:
        decoder = self.backend_tokenizer.get_added_tokens_decoder()
        return {decoder[i].content: int(i) for i in sorted(decoder)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.encode(text, add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        ids = [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
        return str(self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def convert_ids_to_tokens(self, ids: int | list[int]) -> Any:
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> Any:
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(t) for t in tokens]

    def add_special_tokens(self, tokens: dict[str, list[str]], replace_extra_special_tokens: bool = True) -> int:
        """Add ``additional_special_tokens`` (an expert's control tokens); how many were new."""
        from tokenizers import AddedToken

        added = list(tokens.get("additional_special_tokens", []))
        count = int(self.backend_tokenizer.add_special_tokens([AddedToken(t, special=True) for t in added]))
        kept = [] if replace_extra_special_tokens else self.additional
        self.additional = list(dict.fromkeys([*kept, *added]))
        return count

    def transformers(self) -> Any:
        """transformers' tokenizer for the same files, with the same added control tokens (loaded
        once, for the code that reads only transformers' own, such as XGrammar)."""
        if self._transformers is None:
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(self.name_or_path, trust_remote_code=False)
            if self.additional:
                tokenizer.add_special_tokens(
                    {"additional_special_tokens": self.additional}, replace_extra_special_tokens=False
                )
            self._transformers = tokenizer
        return self._transformers

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Any:
        """The conversation rendered as transformers' ``apply_chat_template`` renders it."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        messages = [_aliased({k: v for k, v in _plain(m).items() if v is not None}) for m in conversation]
        variables = _plain({**self.special_tokens_map, **kwargs})
        text = _compiled(self.chat_template).render(
            messages=messages,
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _plain(value: Any) -> Any:
    """What the template may see: JSON-like data only (transformers' ``_plain_template_data``)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _aliased(message: dict[str, Any]) -> dict[str, Any]:
    """Reasoning under each name templates read it by, as transformers fills them."""
    reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


@lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    """The template compiled in the environment transformers compiles chat templates in."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    def refuse_private(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")

    class Namespace(jinja2.utils.Namespace):
        """A namespace that refuses underscore-prefixed names (no way to CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's own signature trick: namespace(self=...)
            self, attributes = args[0], dict(*args[1:], **kwargs)
            for name in attributes:
                refuse_private(name)
            jinja2.utils.Namespace.__init__(self, attributes)

        def __setitem__(self, name: str, value: Any) -> None:
            refuse_private(name)
            super().__setitem__(name, value)

    class Dict:
        """``dict(...)`` in a template, without handing it the dict type itself."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals.update(
        raise_exception=raise_exception, strftime_now=strftime_now, dict=Dict(), namespace=Namespace
    )
    return environment.from_string(template)
