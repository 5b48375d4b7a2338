"""A tool loop with the OpenAI Agents SDK against ``expert-cli serve`` (unmodified SDK, local server).

Serve a function-calling expert first, e.g.::

    expert-cli serve --experts examples/experts/expert-json --port 8000

then::

    .venv/bin/python examples/agents/tool_loop.py --url http://127.0.0.1:8000/v1 --model expert-json

The agent has one Python function as a tool; the model calls it through the server's ``tools`` API
(the call is decoded under a grammar built from the function's schema), the SDK runs it and feeds the
result back, and the transcript of every item is printed. ``--api chat`` uses chat completions
instead of the Responses API. Tracing is off: it would send the run to OpenAI's servers.
"""

from __future__ import annotations

import argparse
import json

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI


@function_tool
def calculate_triangle_area(base: float, height: float) -> str:
    """Calculate the area of a triangle given its base and height."""
    return f"The area is {0.5 * base * height:g} square units."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="expert-json")
    parser.add_argument("--api", choices=["responses", "chat"], default="responses")
    parser.add_argument(
        "--question", default="Find the area of a triangle with a base of 10 units and height of 5 units."
    )
    args = parser.parse_args()
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=args.url, api_key="unused", max_retries=0)
    kind = OpenAIResponsesModel if args.api == "responses" else OpenAIChatCompletionsModel
    agent = Agent(
        name="geometry",
        instructions="Use the tools to answer.",
        model=kind(model=args.model, openai_client=client),
        model_settings=ModelSettings(tool_choice="required", temperature=0, parallel_tool_calls=False),
        tools=[calculate_triangle_area],
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, args.question, max_turns=3)
    print(f"user: {args.question}")
    for item in result.new_items:
        raw = item.raw_item
        shown = raw.model_dump(exclude_none=True) if hasattr(raw, "model_dump") else raw
        print(f"{item.type}: {json.dumps(shown, ensure_ascii=False)}")
    print(f"final output: {result.final_output}")


if __name__ == "__main__":
    main()
