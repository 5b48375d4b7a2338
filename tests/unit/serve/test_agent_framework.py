"""The OpenAI Agents SDK (unmodified) running a tool loop against the server: the model calls a
Python function through ``tools``, the SDK runs it and the run ends with its result. Both of the
SDK's model back-ends: the Responses API and chat completions. Tracing is off (it would export
to OpenAI's servers)."""

from __future__ import annotations

from typing import Literal

import pytest
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

set_tracing_disabled(True)


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_an_agent_calls_a_tool_through_the_server_and_finishes_with_its_result(tools_live, api) -> None:
    calls: list[str] = []

    @function_tool
    def get_weather(unit: Literal["celsius", "fahrenheit"]) -> str:
        """The weather now."""
        calls.append(unit)
        return f"21 degrees {unit}"

    client = AsyncOpenAI(base_url=f"{tools_live.url}/v1", api_key="unused", max_retries=0)
    kind = OpenAIResponsesModel if api == "responses" else OpenAIChatCompletionsModel
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=kind(model="expert-tools", openai_client=client),
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=60, parallel_tool_calls=False),
        tools=[get_weather],
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, "What is the weather?", max_turns=3)
    assert calls and calls[0] in ("celsius", "fahrenheit")
    assert result.final_output == f"21 degrees {calls[0]}"
