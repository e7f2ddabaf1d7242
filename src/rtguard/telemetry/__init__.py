"""rtguard's telemetry: OpenTelemetry spans, Prometheus metrics, log correlation.

Names are declared in ``rtguard.telemetry._names`` and documented in the telemetry guide
(docs/guide/telemetry.md), whose tables the tests check against them.
"""

from ._logging import TraceContextFilter
from ._metrics import RtguardMetrics
from ._names import SCHEMA_URL
from ._session import SessionTelemetry, Telemetry
from ._setup import ExportReport, OtlpExport, configure, start_metrics_server

__all__ = [
    "SCHEMA_URL",
    "ExportReport",
    "OtlpExport",
    "RtguardMetrics",
    "SessionTelemetry",
    "Telemetry",
    "TraceContextFilter",
    "configure",
    "start_metrics_server",
]
