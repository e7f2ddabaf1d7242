"""The built-in realtime simulator: a real WebSocket server on 127.0.0.1 for tests and demos."""

from ._scenario import CallSpec, Faults, Scenario
from ._server import CallRecord, Simulator

__all__ = ["CallRecord", "CallSpec", "Faults", "Scenario", "Simulator"]
