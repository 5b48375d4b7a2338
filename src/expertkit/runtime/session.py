"""A chat session over an engine: history, routing between experts, and the slash commands.

``/reset`` clears the history, ``/expert NAME`` pins an expert (``/expert auto`` routes again,
``/expert base`` uses the base model alone), ``/params`` shows the decoding settings of the
current expert with where each value comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from expertkit.errors import UsageError
from expertkit.runtime.answer import Answer, AskOptions, ask
from expertkit.runtime.engine import Engine
from expertkit.runtime.routing import Router, RoutingDecision
from expertkit.runtime.settings import DecodingOverrides, DecodingSettings, resolve_settings


@dataclass
class ChatSession:
    engine: Engine
    router: Router | None = None
    pinned: str | None = None  # an expert name, "base", or None (route / the only expert)
    overrides: DecodingOverrides = field(default_factory=lambda: DecodingOverrides())
    use_grammar: bool = True
    history: list[dict[str, str]] = field(default_factory=list)
    last_routing: RoutingDecision | None = None

    def choose(self, prompt: str) -> str | None:
        """The expert for ``prompt``: pinned, the only one, or the router's decision."""
        self.last_routing = None
        if self.pinned == "base":
            return None
        if self.pinned is not None:
            return self.pinned
        if len(self.engine.experts) == 1:
            return next(iter(self.engine.experts))
        if self.router is None:
            return None
        self.last_routing = self.router.route(prompt)
        return self.last_routing.expert

    def respond(self, prompt: str, on_text: Callable[[str], None] | None = None, **hooks: Any) -> Answer:
        name = self.choose(prompt)
        messages = [*self.history, {"role": "user", "content": prompt}]
        options = AskOptions(DecodingOverrides(**self.overrides), self.use_grammar, on_text, hooks.get("on_retry"))
        answer = ask(self.engine, name, messages, options)
        answer.routing = self.last_routing.to_json() if self.last_routing else None
        self.history = [*messages, {"role": "assistant", "content": answer.text}]
        return answer

    def pin(self, name: str) -> str:
        if name == "auto":
            self.pinned = None
            return "routing automatically" if self.router else "using the only expert"
        if name != "base" and name not in self.engine.experts:
            raise UsageError(f"no expert {name!r} loaded", f"loaded: {', '.join(self.engine.experts)}, base, auto")
        self.pinned = name
        return f"answering with {name}"

    def params(self) -> DecodingSettings:
        name = self.pinned if self.pinned not in (None, "base") else None
        if name is None and self.pinned is None and len(self.engine.experts) == 1:
            name = next(iter(self.engine.experts))
        return resolve_settings(self.overrides, self.engine.decoding_of(name))
