"""The canonical conversation every source is mapped onto, and how its roles reach a chat template.

Roles (the MyPT seed's unified schema, plus the usual aliases):

==================== ========= =====================================================
role                 trained   rendered as
==================== ========= =====================================================
system               no        ``system``
user                 no        ``user`` (an optional ``context`` is prepended in a
                               ``<context>`` block: the system injected it)
assistant            yes       ``assistant`` (optional ``think`` and ``cite`` blocks)
assistant_toolcall   yes       ``assistant`` whose content is a ``<tool_call>`` block
toolresult           no        ``tool``
==================== ========= =====================================================

The rule: what the model generates is trained, what the system injects is masked. An assistant turn
may carry ``"train": false`` (or ``"weight": 0``): it is rendered in the conversation but never trained,
for text that must be seen and not learnt (a model's own wrong answer in a sparring example).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

TRAINED_ROLES = frozenset({"assistant", "assistant_toolcall"})
ROLES = frozenset({"system", "user", "toolresult"}) | TRAINED_ROLES
ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "model": "assistant",
    "tool": "toolresult",
    "observation": "toolresult",
    "function_call": "assistant_toolcall",
    "toolcall": "assistant_toolcall",
}
OPTIONAL_FIELDS = ("think", "cite", "context")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    think: str | None = None
    cite: str | None = None
    context: str | None = None
    train: bool = True  # false: an assistant turn shown in the conversation, never trained

    @property
    def generated(self) -> bool:
        """An assistant turn (trained or not): what a model writes."""
        return self.role in TRAINED_ROLES

    @property
    def trained(self) -> bool:
        return self.role in TRAINED_ROLES and self.train

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        data.update({name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None})
        if not self.train:
            data["train"] = False
        return data

    def to_template(self) -> dict[str, str]:
        """The ``{role, content}`` dict handed to the base model's chat template."""
        if self.role == "user":
            prefix = f"<context>\n{self.context}\n</context>\n\n" if self.context else ""
            return {"role": "user", "content": prefix + self.content}
        if self.role == "toolresult":
            return {"role": "tool", "content": self.content}
        if self.role in TRAINED_ROLES:
            think = f"<think>\n{self.think}\n</think>\n\n" if self.think else ""
            body = f"<tool_call>\n{self.content}\n</tool_call>" if self.role == "assistant_toolcall" else self.content
            cite = f"\n<cite>{self.cite}</cite>" if self.cite else ""
            return {"role": "assistant", "content": think + body + cite}
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    source: str = ""
    location: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def assistant_turns(self) -> int:
        return sum(message.trained for message in self.messages)

    def to_json(self) -> dict[str, Any]:
        return {"messages": [message.to_json() for message in self.messages]}

    def to_template(self) -> list[dict[str, str]]:
        return [message.to_template() for message in self.messages]

    def content_hash(self) -> str:
        """sha256 of the messages alone (not where they came from): the identity used by dedup and split."""
        text = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "", location: str = "") -> Conversation:
        messages = tuple(Message(**message) for message in data["messages"])
        return cls(messages, source, location)
