"""The Responses API's typed event stream: ``response.created``, then per output item
``response.output_item.added``, its deltas (``response.output_text.delta`` or
``response.function_call_arguments.delta``), its ``.done`` events, and ``response.completed``
carrying the same response a non-streamed request returns (the same item and call ids)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from expertkit.serve import completions as comp
from expertkit.serve import flow
from expertkit.serve.responses_api import (
    Announced,
    ResponseObject,
    ResponsesRequest,
    echo,
    item_id,
    message_item,
    response_object,
)
from expertkit.serve.state import ServerState
from expertkit.serve.tool_calls import ToolCallStream
from expertkit.serve.worker import Job


class ResponseEvents:
    """Numbers events and tracks the items announced so far."""

    def __init__(self, body: ResponsesRequest, prepared: flow.Prepared) -> None:
        self.body, self.prepared = body, prepared
        self.ident, self.created, self.sequence = item_id("resp"), comp.now(), 0
        self.calls = ToolCallStream(prepared.tools) if prepared.tools is not None else None
        self.ids = Announced()
        self.text = ""

    def event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def shell(self, status: str) -> dict[str, Any]:
        model = self.prepared.target.model_id
        made = ResponseObject(id=self.ident, created_at=self.created, status=status, model=model, output=[])
        return {**made.to_json(), **echo(self.body)}

    def text_piece(self, piece: str) -> list[str]:
        self.text += piece
        if self.calls is not None:
            deltas = self.calls.push(piece)
            if self.calls.is_call():
                return [e for delta in deltas for e in self._call_delta(delta)]
        out = []
        if self.ids.message_id is None:
            self.ids.message_id = item_id("msg")
            item = {**message_item(self.ids.message_id, "", "in_progress"), "content": []}
            out.append(self.event("response.output_item.added", output_index=0, item=item))
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(self.event("response.content_part.added", **self._where(), part=part))
        out.append(self.event("response.output_text.delta", **self._where(), delta=piece, logprobs=[]))
        return out

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.ids.message_id, "output_index": 0, "content_index": 0}

    def _call_delta(self, delta: dict[str, Any]) -> list[str]:
        index = delta["index"]
        out = []
        if "id" in delta:
            self.ids.call_items.append(item_id("fc"))
            self.ids.call_ids.append(delta["id"])
            item = {
                "type": "function_call",
                "id": self.ids.call_items[index],
                "call_id": delta["id"],
                "name": delta["function"]["name"],
                "arguments": "",
                "status": "in_progress",
            }
            out.append(self.event("response.output_item.added", output_index=index, item=item))
        if piece := delta["function"].get("arguments"):
            where = {"item_id": self.ids.call_items[index], "output_index": index}
            out.append(self.event("response.function_call_arguments.delta", **where, delta=piece))
        return out

    def finish(self, outcome: comp.Outcome) -> list[str]:
        answer = outcome.answers[0]
        out: list[str] = []
        if answer.text.startswith(self.text) and len(answer.text) > len(self.text):
            out += self.text_piece(answer.text[len(self.text) :])
        final = response_object(self.body, outcome, self.ident, self.created, self.ids)
        for index, item in enumerate(final.output):
            if item["type"] == "function_call":
                where = {"item_id": item["id"], "output_index": index}
                out.append(self.event("response.function_call_arguments.done", **where, arguments=item["arguments"]))
            else:
                if self.ids.message_id is None:  # an empty answer: announce its item now
                    self.ids.message_id = item["id"]
                    out.append(self.event("response.output_item.added", output_index=0, item={**item, "content": []}))
                text = item["content"][0]["text"]
                out.append(self.event("response.output_text.done", **self._where(), text=text, logprobs=[]))
                out.append(self.event("response.content_part.done", **self._where(), part=item["content"][0]))
            out.append(self.event("response.output_item.done", output_index=index, item=item))
        kind = "response.completed" if final.status == "completed" else "response.incomplete"
        out.append(self.event(kind, response=final.to_json()))
        return out


async def response_stream(
    state: ServerState,
    body: ResponsesRequest,
    prepared: flow.Prepared,
    job: Job,
    events: asyncio.Queue[tuple[str, Any]],
) -> AsyncIterator[str]:
    writer = ResponseEvents(body, prepared)
    try:
        yield writer.event("response.created", response=writer.shell("in_progress"))
        yield writer.event("response.in_progress", response=writer.shell("in_progress"))
        while (event := await flow.next_event(job, events)) is not None:
            kind, value = event
            if kind == "text":
                for line in writer.text_piece(value):
                    yield line
        try:
            outcome: comp.Outcome = job.future.result()
        except Exception as exc:  # after the headers: an in-stream error event, then the end
            error = flow.stream_failure(exc)
            yield writer.event("error", code=error.code, message=error.message, param=error.param)
            return
        outcome.tools = prepared.tools
        flow.count_tokens(state, outcome)
        for line in writer.finish(outcome):
            yield line
    finally:
        if not job.future.done():
            job.cancelled.set()  # the client went away mid-stream
            state.metrics.error("client_disconnected")
