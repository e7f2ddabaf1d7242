"""The promise, checked after any run: every call the model issued got exactly one output the
model sees, or is accounted for as incomplete (event, metric and span); every exception a tool
raised reached the app exactly once; nothing was left running or unhandled."""

from __future__ import annotations

from conftest import Run
from rtguard import CallIncomplete, IncompleteReason, OutputAcknowledged, ToolFailed


def assert_invariant(run: Run, tool_errors: list[BaseException] = ()) -> None:  # type: ignore[assignment]
    incomplete = {e.call_id: e for e in run.of_type(CallIncomplete)}
    acknowledged = [e.call_id for e in run.of_type(OutputAcknowledged)]
    assert len(acknowledged) == len(set(acknowledged)), "a call was acknowledged twice"
    assert not set(acknowledged) & set(incomplete), "a call both delivered and incomplete"
    spans = {
        (s.attributes or {}).get("gen_ai.tool.call.id"): s for s in run.spans_named("execute_tool")
    }
    for call in run.sim.calls.values():
        assert len(call.outputs) <= 1, f"{call.call_id}: the model saw {len(call.outputs)} outputs"
        if call.call_id in incomplete:
            reason = incomplete[call.call_id].reason
            attributes = spans[call.call_id].attributes or {}
            assert attributes["rtguard.call.incomplete_reason"] == reason.value
        else:
            assert call.outputs, f"{call.call_id}: no output and not reported incomplete"
            assert call.call_id in acknowledged, f"{call.call_id}: output never acknowledged"
    counted = sum(
        run.sample("rtguard_calls_without_output_total", reason=r) for r in IncompleteReason
    )
    assert counted == len(incomplete)
    delivered = [e.error for e in run.of_type(ToolFailed)] + run.raised
    for error in tool_errors:
        assert sum(d is error for d in delivered) == 1, f"{error!r} delivered {delivered}"
    assert run.loop_errors == [], run.loop_errors
    assert run.leftover_tasks == [], run.leftover_tasks
    assert run.session.closed
