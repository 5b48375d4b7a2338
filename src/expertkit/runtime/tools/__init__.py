"""Function calling under an expert's contract: render tools and history, decode calls under a
grammar built from the tools' schemas, and read the calls back (also while streaming)."""

from expertkit.runtime.tools.calls import CallScanner, parse_calls
from expertkit.runtime.tools.contract import (
    BFCL_TO_JSON_SCHEMA,
    Call,
    Tool,
    ToolChoice,
    ToolError,
    call_text,
    render_conversation,
    restyle,
    tool_list_text,
)
from expertkit.runtime.tools.grammar import call_schema, tool_grammar

__all__ = [
    "BFCL_TO_JSON_SCHEMA",
    "Call",
    "CallScanner",
    "Tool",
    "ToolChoice",
    "ToolError",
    "call_schema",
    "call_text",
    "parse_calls",
    "render_conversation",
    "restyle",
    "tool_grammar",
    "tool_list_text",
]
