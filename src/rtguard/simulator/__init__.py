"""The built-in realtime simulator: a real WebSocket server on 127.0.0.1 for tests and demos,
and a fault-injecting relay to put between a session and a server."""

from ._conversation import Conversation
from ._proxy import FaultProxy, FrameFault
from ._scenario import CallSpec, Faults, Scenario, ScenarioError
from ._server import MALFORMED_FRAME, CallRecord, Simulator

__all__ = [
    "MALFORMED_FRAME",
    "CallRecord",
    "CallSpec",
    "Conversation",
    "FaultProxy",
    "Faults",
    "FrameFault",
    "Scenario",
    "ScenarioError",
    "Simulator",
]
