"""Map a source record onto a :class:`Conversation` through the manifest's ``field_mapping``.

Three shapes, tried in this order:

1. ``messages``: a field holding a list of ``{role, content}`` (or ShareGPT ``{from, value}``).
2. ``prompt_template`` + ``response``: a Python format string over the record's fields (e.g. the
   schema and the question for SQL) becomes the user turn, ``response`` names the answer field.
3. ``instruction`` / ``input`` / ``output`` columns (Alpaca style).

``system`` (a field name) adds a system turn in shapes 2 and 3. Without a mapping the record's own
keys choose the shape. A record that does not fit raises :class:`RecordError` with the reason; the
caller attaches the file and line.
"""

from __future__ import annotations

import string
from typing import Any

from expertkit.data.conversation import OPTIONAL_FIELDS, ROLE_ALIASES, ROLES, TRAINED_ROLES, Conversation, Message
from expertkit.manifest.sections import FieldMapping


class RecordError(ValueError):
    """A record that cannot become a training conversation; the message says why."""


def default_mapping(record: dict[str, Any]) -> FieldMapping:
    for key in ("messages", "conversations"):
        if key in record:
            return FieldMapping(messages=key)
    if "instruction" in record or "output" in record:
        return FieldMapping(instruction="instruction", input="input", output="output", system="system")
    if "prompt" in record and "completion" in record:
        return FieldMapping(prompt_template="{prompt}", response="completion")
    raise RecordError(f"no field_mapping and no known fields (found {sorted(record)[:8]})")


def to_conversation(record: dict[str, Any], mapping: FieldMapping | None) -> Conversation:
    mapping = mapping or default_mapping(record)
    if mapping.messages:
        messages = _messages(_field(record, mapping.messages, list), mapping.messages)
    elif mapping.prompt_template:
        prompt = _render_template(mapping.prompt_template, record)
        answer = _field(record, mapping.response or "response", str)
        messages = [*_system(record, mapping), Message("user", prompt), Message("assistant", answer)]
    elif mapping.output:
        instruction = _field(record, mapping.instruction, str) if mapping.instruction else ""
        extra = record.get(mapping.input) if mapping.input else None
        prompt = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        answer = _field(record, mapping.output, str)
        messages = [*_system(record, mapping), Message("user", prompt), Message("assistant", answer)]
    else:
        raise RecordError("field_mapping needs `messages`, `prompt_template` + `response`, or `output`")
    return check_conversation(tuple(messages))


def check_conversation(messages: tuple[Message, ...]) -> Conversation:
    if not any(message.trained for message in messages):
        if any(message.generated for message in messages):
            raise RecordError("every assistant turn has train: false: nothing to train on")
        raise RecordError("conversation has no assistant turn: nothing to train on")
    first = next((m for m in messages if m.role != "system"), None)
    if first is not None and first.generated:
        raise RecordError("conversation starts with an assistant turn: the first turn after system must be user")
    for number, message in enumerate(messages, start=1):
        if message.trained and not message.content.strip():
            raise RecordError(f"message {number} ({message.role}) is empty: empty answers teach nothing")
    return Conversation(messages)


def _field(record: dict[str, Any], name: str, kind: type) -> Any:
    if name not in record or record[name] is None:
        raise RecordError(f"missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind):
        raise RecordError(f"field {name!r} should be {kind.__name__}, found {type(value).__name__}")
    return value


def _system(record: dict[str, Any], mapping: FieldMapping) -> list[Message]:
    if not mapping.system:
        return []
    value = record.get(mapping.system)
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise RecordError(f"field {mapping.system!r} should be str, found {type(value).__name__}")
    return [Message("system", value)]


def _render_template(template: str, record: dict[str, Any]) -> str:
    for _, name, _, _ in string.Formatter().parse(template):
        if name and name not in record:
            raise RecordError(f"prompt_template uses {{{name}}} but the record has no field {name!r}")
    try:
        return template.format_map(record)
    except (ValueError, IndexError, KeyError) as exc:
        raise RecordError(f"prompt_template cannot be filled: {exc}") from exc


def _messages(items: list[Any], field_name: str) -> list[Message]:
    messages = []
    for number, item in enumerate(items, start=1):
        where = f"{field_name}[{number - 1}]"
        if not isinstance(item, dict):
            raise RecordError(f"{where} should be an object, found {type(item).__name__}")
        role = item.get("role", item.get("from"))
        content = item.get("content", item.get("value"))
        if not isinstance(role, str):
            raise RecordError(f"{where} has no string `role`")
        role = ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            raise RecordError(f"{where}: unknown role {role!r} (expected one of {', '.join(sorted(ROLES))})")
        if not isinstance(content, str):
            raise RecordError(f"{where}.content should be str, found {type(content).__name__}")
        optional = {name: item[name] for name in OPTIONAL_FIELDS if item.get(name) is not None}
        for name, value in optional.items():
            if not isinstance(value, str):
                raise RecordError(f"{where}.{name} should be str, found {type(value).__name__}")
        messages.append(Message(role, content, **optional, train=_train_flag(item, where, role)))
    return messages


def _train_flag(item: dict[str, Any], where: str, role: str) -> bool:
    """``train`` (a boolean) or ``weight`` (0 or 1) of one message; only assistant turns are trained."""
    train, weight = item.get("train"), item.get("weight")
    if train is not None and not isinstance(train, bool):
        raise RecordError(f"{where}.train should be true or false, found {type(train).__name__}")
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        raise RecordError(f"{where}.weight should be 0 (not trained) or 1, found {weight!r}")
    if train is not None and weight is not None and bool(weight) != train:
        raise RecordError(f"{where}: train {str(train).lower()} and weight {weight} disagree")
    flag = train if train is not None else (bool(weight) if weight is not None else True)
    if flag and (train is True or weight == 1) and role not in TRAINED_ROLES:
        raise RecordError(f"{where}: only assistant turns can be trained ({role} never is)")
    return flag
