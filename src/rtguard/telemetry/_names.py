"""Every span name, attribute key and metric name rtguard emits, in one place.

These are a public contract: dashboards, alert rules and trace queries key on them, and the
tables of the telemetry guide (docs/guide/telemetry.md) are checked against this module by
the tests.

GenAI names follow the OpenTelemetry GenAI semantic conventions (status: Development) as
published in ``open-telemetry/semantic-conventions-genai`` with schema URL
``https://opentelemetry.io/schemas/gen-ai/1.42.0``; the realtime names follow that
repository's draft ``gen-ai-realtime-spans.md`` (``gen_ai.realtime_session.id``,
``realtime_inference`` generation spans, the ``gen_ai.client.realtime_session.*`` events),
the turn container and end reasons follow ``gen-ai-voice-agents.md``, and the handoff names
follow ``gen-ai-agent-spans.md`` (``execute_tool``). ``rtguard.*`` names are only for what the
conventions lack. docs/operations.md explains the trace shape.
"""

from __future__ import annotations

SCHEMA_URL = "https://opentelemetry.io/schemas/gen-ai/1.42.0"
"""The OpenTelemetry schema URL of rtguard's tracer and logger: the GenAI semantic
conventions' version its names follow."""
INSTRUMENTATION_NAME = "rtguard"

# --- span names ----------------------------------------------------------------------------
OP_INVOKE_AGENT = "invoke_agent"  # one per turn: the trace's root
OP_EXECUTE_TOOL = "execute_tool"
OP_REALTIME_INFERENCE = "realtime_inference"
SPAN_SEND_OUTPUT = "rtguard.send_output"

# --- events (log records through the OpenTelemetry Logs API) ---------------------------------
EVENT_SESSION_STARTED = "gen_ai.client.realtime_session.started"
EVENT_SESSION_ENDED = "gen_ai.client.realtime_session.ended"

# --- span events -----------------------------------------------------------------------------
SPAN_EVENT_EXCEPTION = "exception"
SPAN_EVENT_SEND_RETRY = "rtguard.send_retry_scheduled"
SPAN_EVENT_CARRIED = "rtguard.call.carried"  # the call went on over a new connection
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_STACKTRACE = "exception.stacktrace"

# --- GenAI attributes ----------------------------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_TYPE = "gen_ai.tool.type"
GEN_AI_TOOL_DESCRIPTION = "gen_ai.tool.description"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_HANDOFF_SOURCE = "gen_ai.agent.handoff.source.name"
GEN_AI_HANDOFF_TARGET = "gen_ai.agent.handoff.target.name"
GEN_AI_END_REASON = "gen_ai.agent.invocation.end_reason"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_REALTIME_SESSION_ID = "gen_ai.realtime_session.id"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
ERROR_TYPE = "error.type"
PROVIDER_OPENAI = "openai"
TOOL_TYPE_FUNCTION = "function"

# gen_ai.agent.invocation.end_reason values (a failed turn is an ERROR status instead).
END_COMPLETED = "completed"
END_INTERRUPTED = "interrupted"  # its last response was cancelled (barge-in, interrupt())
END_SESSION_CLOSED = "session_closed"

# --- rtguard attributes --------------------------------------------------------------------
RTGUARD_OUTCOME = "rtguard.call.outcome"
RTGUARD_SEND_ATTEMPTS = "rtguard.call.send_attempts"
RTGUARD_DELIVERED = "rtguard.call.output_delivered"
RTGUARD_INCOMPLETE_REASON = "rtguard.call.incomplete_reason"
RTGUARD_ATTEMPT = "rtguard.send.attempt"
RTGUARD_SEND_RESULT = "rtguard.send.result"
RTGUARD_WILL_RETRY = "rtguard.send.will_retry"
# SessionClosed's reason ("closed", "server_closed", "connection_lost", "reconnect_failed"),
# or, when rtguard reconnects, why the connection ended (a Loss: "connection_lost", ...).
RTGUARD_SESSION_CLOSE_REASON = "rtguard.session.close_reason"
# On a carried call's rtguard.call.carried event: why its connection ended, and how many
# attempts the new one took.
RTGUARD_RECONNECT_REASON = "rtguard.reconnect.reason"
RTGUARD_RECONNECT_ATTEMPTS = "rtguard.reconnect.attempts"

# rtguard.call.outcome of a call whose tool never finished: the session ended first and
# cancelled it (the Outcome enum covers every tool that did finish).
OUTCOME_CANCELLED = "cancelled"

# --- error.type values (low cardinality; a tool's own exception uses its class name) -------
ERROR_TIMEOUT = "timeout"
ERROR_HANDOFF_FAILED = "handoff_failed"
ERROR_OUTPUT_SEND_FAILED = "output_send_failed"
ERROR_INVALID_ARGUMENTS = "invalid_arguments"
ERROR_UNKNOWN_TOOL = "unknown_tool"
ERROR_REJECTED = "rejected"
ERROR_RESPONSE_TIMEOUT = "response_timeout"  # no response.done within response_timeout
ERROR_OTHER = "_OTHER"  # the conventions' fallback (a failed response without an error code)

# --- metrics (Prometheus names) ------------------------------------------------------------
METRIC_TOOL_DURATION = "gen_ai_execute_tool_duration_seconds"
METRIC_TOOL_CALLS = "rtguard_tool_calls_total"
METRIC_OUTPUT_LATENCY = "rtguard_output_latency_seconds"
METRIC_OUTPUT_SENDS = "rtguard_output_sends_total"
METRIC_SEND_RETRIES = "rtguard_output_send_retries_total"
METRIC_CALLS_WAITING = "rtguard_calls_awaiting_output"
METRIC_OLDEST_WAITING_AGE = "rtguard_oldest_call_awaiting_output_age_seconds"
METRIC_CALLS_WITHOUT_OUTPUT = "rtguard_calls_without_output_total"
METRIC_SWALLOWED_ERRORS = "rtguard_swallowed_errors_total"
METRIC_PROTOCOL_ERRORS = "rtguard_protocol_errors_total"
METRIC_HANDOFFS = "rtguard_handoffs_total"
METRIC_EVENTS_DROPPED = "rtguard_events_dropped_total"
METRIC_ACTIVE_SESSIONS = "rtguard_active_sessions"
METRIC_SESSIONS_CLOSED = "rtguard_sessions_closed_total"
METRIC_RECONNECTS = "rtguard_reconnects_total"
METRIC_CALLS_CARRIED = "rtguard_calls_carried_total"
METRIC_REPLAYED_ITEMS = "rtguard_replayed_items_total"
METRIC_DISCONNECTED = "rtguard_disconnected_seconds"
METRIC_BUILD_INFO = "rtguard_build_info"

# --- SLO recording rules (dashboards/slo.yml, generated by dashboards/generate.py) -----------
# The share of calls NOT answered within the SLO's threshold (late, or no output at all), per
# job, over each window the multi-window multi-burn-rate alerts and the dashboard read.
SLO_ERROR_RATIO = "job:rtguard_calls_answered_slo_errors:ratio_rate{window}"
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")

# The tool-name label for a name the model invented: never the name itself.
UNKNOWN_TOOL_LABEL = "_unknown"

# gen_ai.execute_tool.duration's advised ExplicitBucketBoundaries.
TOOL_DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
# The wait a voice-agent user feels: sub-millisecond on loopback up to many seconds.
OUTPUT_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Label values exported as 0 from the start, so alerts see a series before the first event.
SWALLOWED_PLACES = (
    "dispatch",
    "failure_output",
    "response_create",
    "transport_close",
    "span_export",
    "replay_policy",
)
PROTOCOL_ERROR_KINDS = (
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "missing_type",
    "invalid_field",
    "server_error",
    "response_timeout",
)
SEND_RESULTS = ("sent", "failed")
# SessionClosed reasons, and the outcomes of a reconnect (its reason label is a Loss value).
SESSION_CLOSE_REASONS = ("closed", "server_closed", "connection_lost", "reconnect_failed")
RECONNECT_OUTCOMES = ("resumed", "failed")
# Time without a connection: a quick resume is a fraction of a second, a backoff seconds.
DISCONNECTED_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
