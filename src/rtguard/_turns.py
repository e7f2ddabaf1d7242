"""Response turn-taking: when to ask the model to respond (``response.create``).

The rules, from the Realtime API: one response at a time (a ``response.create`` while one is
active is refused), and the model reacts to tool outputs only when asked. So rtguard asks
once per model response, after its ``response.done``, when every call of that response has
its output delivered, and never while the server is responding.

"Outputs waiting for a response" is derived from the ledger's transitions (each move into a
delivered state counts), never set on one code path: an output the server confirms before
our own write returned counts the same as any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._ledger import DELIVERED, UNSENT, Call, CallState

__all__ = ["Turns"]

ACTIVE_RESPONSE = "conversation_already_has_active_response"


@dataclass(slots=True)
class _Group:
    """The calls of one model response (or one call that came without a response id)."""

    done: bool  # the response's response.done came (or was given up on)
    answer: bool = True  # False for a cancelled response: whoever interrupted takes the turn
    open: int = 0
    unsent: int = 0
    delivered: int = 0  # outputs delivered since this group last asked for a response


class Turns:
    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self.responding = False  # a response is in progress, or our response.create is
        self.wanted = False
        self.enabled = True  # off while the session closes: nobody is left to listen
        self.epoch = 0  # bumped each time a response starts, to time each one separately
        self._active: str | None = None  # the id of the response in progress, once known

    # --- calls (fed by the ledger) ---------------------------------------------------------

    def add_call(self, call: Call, *, has_response: bool) -> None:
        group = self._groups.get(call.response_key)
        if group is None:
            group = self._groups[call.response_key] = _Group(done=not has_response)
            if has_response and not self.responding:
                self._start()  # its response.created was missed; it is evidently running
                self._active = call.response_key
        group.open += 1
        group.unsent += 1

    def call_moved(self, call: Call, old_state: CallState) -> None:
        group = self._groups[call.response_key]
        new_state = call.state
        group.unsent += (new_state in UNSENT) - (old_state in UNSENT)
        if new_state in DELIVERED and old_state in UNSENT:
            group.delivered += 1
        if new_state in (CallState.ACKNOWLEDGED, CallState.INCOMPLETE):
            group.open -= 1
        self._settle(call.response_key, group)

    # --- the server's responses -----------------------------------------------------------

    def response_created(self, response_id: str | None) -> None:
        if not self.responding:
            self._start()
        self._active = response_id

    def response_done(self, response_id: str | None, status: str | None) -> None:
        """The response ended (``response_id`` None: the one in progress, given up on)."""
        key = response_id or self._active
        self.responding = False
        self._active = None
        group = self._groups.get(key) if key else None
        if group is not None and key is not None:
            group.done = True
            group.answer = status != "cancelled"
            self._settle(key, group)

    def connection_lost(self) -> None:
        """The connection ended: every response in progress ended with it, and each calls'
        group counts as complete as issued. A response the loss cut short (or our request for
        one) is asked for again on the new connection: nobody else will answer that turn."""
        if self.responding:
            self.wanted = True
        self.responding = False
        self._active = None
        for key, group in list(self._groups.items()):
            group.done = True
            self._settle(key, group)

    # --- asking for a response ------------------------------------------------------------

    def request(self) -> None:
        """The app added input and wants the model to respond."""
        self.wanted = True

    def take(self) -> bool:
        """Whether to send ``response.create`` now; if so, a response is in progress."""
        if not (self.wanted and self.enabled) or self.responding:
            return False
        self.wanted = False
        self._start()
        self._active = None
        return True

    def create_failed(self) -> None:
        """Our ``response.create`` did not leave: no response started; ask again later."""
        self.responding = False
        self.wanted = True

    def create_refused(self, code: str | None) -> None:
        if code == ACTIVE_RESPONSE:
            self.wanted = True  # after the response that is running ends
        else:
            self.responding = False

    def _start(self) -> None:
        self.responding = True
        self.epoch += 1

    def _settle(self, key: str, group: _Group) -> None:
        if group.done and group.unsent == 0:
            if group.delivered and group.answer:
                self.wanted = True
            group.delivered = 0
            if group.open == 0:
                del self._groups[key]
