"""Split a rendered conversation into trained and masked text segments, by construction.

The text is always the base model's own chat template output (``apply_chat_template``), so what
is trained is byte-for-byte what is served. Which characters are trained is never found by
searching the output for marker strings; it comes from how the text was built:

``prefix`` (any prefix-stable template, e.g. ChatML in SmolLM2)
    Render the conversation's prefixes. Message *k* owns ``render(m[:k+1])[len(render(m[:k])):]``;
    for an assistant turn, ``render(m[:k], add_generation_prompt=True)`` splits the role header
    (masked) from the body (trained, end-of-turn token included, trailing newline masked). Every
    prefix must be a prefix of the next: when it is not, we stop with the offending message.

``qwen3`` (Qwen3's template, which is *not* prefix-stable)
    Qwen3 rewrites history: an assistant turn rendered last carries a ``<think>`` block that
    disappears once a later user turn follows. Prefix rendering cannot express that, so this
    segmenter formats each message the way the template does and the result is compared with
    the template's own output for every example (any drift stops preparation).

:func:`select_segmenter` picks the first segmenter that reproduces the template on probe
conversations (single-turn, multi-turn, tool call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from expertkit.errors import TemplateError
from expertkit.registry import Registry


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool
    message: int


class Renderer(Protocol):
    def __call__(self, messages: Sequence[dict[str, str]], generation_prompt: bool = False) -> str: ...


Segmenter = Callable[[Renderer, Sequence[dict[str, str]], Sequence[bool]], list[Segment]]
SEGMENTERS: Registry[Segmenter] = Registry()


def template_renderer(tokenizer: Any) -> Renderer:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("the base model's tokenizer has no chat template", "use an instruct/chat model")

    def render(messages: Sequence[dict[str, str]], generation_prompt: bool = False) -> str:
        try:
            text = tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # jinja raises its own exception types for template errors
            raise TemplateError(f"the chat template cannot render this conversation: {exc}") from exc
        return str(text)

    return render


def _require_prefix(prefix: str, text: str, message: int, what: str) -> None:
    if text.startswith(prefix):
        return
    at = next((i for i, (a, b) in enumerate(zip(prefix, text, strict=False)) if a != b), min(len(prefix), len(text)))
    raise TemplateError(
        f"chat template is not prefix-stable at message {message + 1} ({what}): "
        f"rendering changed earlier text at character {at}: {prefix[at : at + 40]!r} became {text[at : at + 40]!r}",
        "loss masks cannot be derived by construction from this template; use a prefix-stable template",
    )


@SEGMENTERS.register("prefix")
def prefix_segments(render: Renderer, messages: Sequence[dict[str, str]], trained: Sequence[bool]) -> list[Segment]:
    segments: list[Segment] = []
    previous = ""
    for k in range(len(messages)):
        full = render(messages[: k + 1])
        if trained[k]:
            prompt = render(messages[:k], generation_prompt=True)
            _require_prefix(previous, prompt, k, "generation prompt")
            _require_prefix(prompt, full, k, "assistant turn")
            segments.extend(_assistant_segments(prompt[len(previous) :], full[len(prompt) :], k))
        else:
            _require_prefix(previous, full, k, messages[k]["role"])
            segments.append(Segment(full[len(previous) :], False, k))
        previous = full
    return segments


def _assistant_segments(header: str, body: str, message: int, trained: bool = True) -> list[Segment]:
    """Header masked; body trained through its end-of-turn token; trailing whitespace masked."""
    kept = body.rstrip()
    return [
        Segment(header, False, message),
        Segment(kept, trained, message),
        Segment(body[len(kept) :], False, message),
    ]


def _qwen3_last_query(messages: Sequence[dict[str, str]]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        content = message["content"]
        wrapped = content.startswith("<tool_response>") and content.endswith("</tool_response>")
        if message["role"] == "user" and not wrapped:
            return index
    return len(messages) - 1


def _qwen3_assistant_body(content: str, index: int, last_query: int, last: bool) -> str:
    reasoning = ""
    if "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    if index > last_query and (last or reasoning):
        return "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    return content


@SEGMENTERS.register("qwen3")
def qwen3_segments(render: Renderer, messages: Sequence[dict[str, str]], trained: Sequence[bool]) -> list[Segment]:
    last_query = _qwen3_last_query(messages)
    count = len(messages)
    segments: list[Segment] = []
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role in ("user", "system"):
            segments.append(Segment(f"<|im_start|>{role}\n{content}<|im_end|>\n", False, i))
        elif role == "assistant":
            body = _qwen3_assistant_body(content, i, last_query, i == count - 1)
            segments.extend(_assistant_segments("<|im_start|>assistant\n", body + "<|im_end|>\n", i, trained[i]))
        elif role == "tool":
            opens = i == 0 or messages[i - 1]["role"] != "tool"
            closes = i == count - 1 or messages[i + 1]["role"] != "tool"
            text = f"{'<|im_start|>user' if opens else ''}\n<tool_response>\n{content}\n</tool_response>"
            segments.append(Segment(text + ("<|im_end|>\n" if closes else ""), False, i))
        else:
            raise TemplateError(f"the qwen3 segmenter has no rule for role {role!r}")
    return segments


PROBES: list[list[dict[str, str]]] = [
    [{"role": "system", "content": "S."}, {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
    [
        {"role": "system", "content": "S."},
        {"role": "user", "content": "Q1?"},
        {"role": "assistant", "content": "A1."},
        {"role": "user", "content": "Q2?"},
        {"role": "assistant", "content": "A2."},
    ],
    [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": '<tool_call>\n{"name": "w"}\n</tool_call>'},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ],
]


def select_segmenter(render: Renderer) -> str:
    """The name of the first segmenter that reproduces the template exactly on every probe."""
    failures = []
    for name, function in SEGMENTERS.items():
        try:
            for probe in PROBES:
                flags = [m["role"] == "assistant" for m in probe]
                if "".join(s.text for s in function(render, probe, flags)) != render(probe):
                    raise TemplateError(f"{name} output differs from the template on a probe conversation")
        except TemplateError as exc:
            failures.append(f"{name}: {exc.message}")
            continue
        return name
    raise TemplateError(
        "no segmenter reproduces this chat template, so exact loss masks cannot be derived:\n  "
        + "\n  ".join(failures),
        "use a prefix-stable chat template, or add a segmenter for it in expertkit.data.templates",
    )
