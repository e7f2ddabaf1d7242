"""The built-in realtime simulator: a real WebSocket server on 127.0.0.1 for tests and demos,
and a fault-injecting relay to put between a session and a server."""

from ._proxy import FaultProxy, FrameFault
from ._scenario import CallSpec, Faults, Scenario
from ._server import CallRecord, Simulator

__all__ = ["CallRecord", "CallSpec", "FaultProxy", "Faults", "FrameFault", "Scenario", "Simulator"]
