"""rtguard's telemetry: OpenTelemetry spans, Prometheus metrics, log correlation.

Names are declared in :mod:`rtguard.telemetry._names` and documented in the README.
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
