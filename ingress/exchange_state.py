"""The life cycle of one exchange (a request and its response), as data.

h11's ``_state.py`` is the model: the states and the moves between them are
tables, and :meth:`ExchangeState.to` is the one place that changes state. An
event the table does not allow in the current state raises
:class:`IllegalTransition`, naming the event, the side and the state: a bug
in the proxy, never the peer's doing (a peer's mistakes are refused before
they become events). This module does no I/O and knows nothing of
HTTP/1.1 or of sockets, so an HTTP/2 client protocol drives the same table.

Two sides move independently, as h11's client and server roles do:

- the **request** side, what the proxy has read of the client's request
  (an exchange is made once its request head is complete; reading a head
  is the client protocol's business): ``BODY`` (body bytes are arriving)
  → ``RECEIVED`` (read to its end; a request without a body starts
  there), or ``REFUSED`` (malformed, too large or too slow: the rest is
  never read, the connection ends after it);
- the **response** side, what the client has been sent: ``IDLE`` (not its
  turn yet) → ``CONNECTING`` (no upstream connection yet) → ``WAITING``
  (the request went upstream) → ``STREAMING`` (the upstream's head went to
  the client) → ``DONE``; ``ANSWER`` (a whole response of the proxy's own:
  a route's answer, 502, 504, 408 ...) ends it from any state before
  ``STREAMING``; ``SWITCH`` (101) makes the connection a tunnel; ``ABORT``
  (the client went away, or the response was cut) ends it anywhere else.

A response can end before its request does (an early 413, or an upstream
that answers before reading the whole body), so neither side waits for the
other; the exchange is over when its response is ``DONE`` and its request
is ``RECEIVED`` (or the connection will not be reused anyway).
"""

from __future__ import annotations

# -- request side -----------------------------------------------------------------
BODY = "BODY"
RECEIVED = "RECEIVED"
REFUSED = "REFUSED"

# -- response side ----------------------------------------------------------------
IDLE = "IDLE"
CONNECTING = "CONNECTING"
WAITING = "WAITING"
STREAMING = "STREAMING"
DONE = "DONE"
TUNNEL = "TUNNEL"
ABORTED = "ABORTED"

# -- events -----------------------------------------------------------------------
REQUEST_END = "REQUEST_END"  # the request's last byte was read
REFUSE = "REFUSE"  # the request is refused; what is left of it is never read
CONNECT = "CONNECT"  # no idle upstream connection: a new one is being opened
SEND = "SEND"  # the request head went to an upstream connection
RETRY = "RETRY"  # a reused upstream closed before answering: once more on a fresh one
RESPONSE_HEAD = "RESPONSE_HEAD"  # the upstream's response head went to the client
RESPONSE_END = "RESPONSE_END"  # the upstream's response ended, and so did the client's
ANSWER = "ANSWER"  # a whole response of the proxy's own went to the client
SWITCH = "SWITCH"  # the upstream switched protocols (101): bytes now pass both ways
ABORT = "ABORT"  # the response will never be complete (client gone, response cut)

#: Request side: state -> {event: next state}.
REQUEST_TRANSITIONS: dict[str, dict[str, str]] = {
    BODY: {REQUEST_END: RECEIVED, REFUSE: REFUSED},
    RECEIVED: {},
    REFUSED: {},
}

#: Response side: state -> {event: next state}.
RESPONSE_TRANSITIONS: dict[str, dict[str, str]] = {
    IDLE: {CONNECT: CONNECTING, SEND: WAITING, ANSWER: DONE, ABORT: ABORTED},
    CONNECTING: {SEND: WAITING, ANSWER: DONE, ABORT: ABORTED},
    WAITING: {
        RESPONSE_HEAD: STREAMING,
        SWITCH: TUNNEL,
        RETRY: CONNECTING,
        ANSWER: DONE,
        ABORT: ABORTED,
    },
    STREAMING: {RESPONSE_END: DONE, ABORT: ABORTED},
    DONE: {},
    TUNNEL: {},
    ABORTED: {},
}

REQUEST_EVENTS = frozenset(e for moves in REQUEST_TRANSITIONS.values() for e in moves)
RESPONSE_EVENTS = frozenset(e for moves in RESPONSE_TRANSITIONS.values() for e in moves)
assert not REQUEST_EVENTS & RESPONSE_EVENTS, "an event belongs to one side"


class IllegalTransition(RuntimeError):
    """An event the life cycle does not allow in the current state (a bug in the proxy)."""

    def __init__(self, event: str, side: str, state: str) -> None:
        super().__init__(f"exchange: event {event} is not allowed when the {side} is {state}")
        self.event = event
        self.side = side
        self.state = state


class ExchangeState:
    """The two sides' states of one exchange; :meth:`to` is the only way to change them."""

    __slots__ = ("request_state", "response_state")

    def __init__(self) -> None:
        self.request_state = BODY
        self.response_state = IDLE

    def to(self, event: str) -> None:
        """Move the side ``event`` belongs to; IllegalTransition if it may not happen now."""
        # Subscripts, not dict.get: this runs about five times per request.
        if event in REQUEST_EVENTS:
            try:
                self.request_state = REQUEST_TRANSITIONS[self.request_state][event]
            except KeyError:
                raise IllegalTransition(event, "request", self.request_state) from None
        else:
            try:
                self.response_state = RESPONSE_TRANSITIONS[self.response_state][event]
            except KeyError:
                raise IllegalTransition(event, "response", self.response_state) from None

    @property
    def response_started(self) -> bool:
        """Bytes of the response reached the client (it can no longer be replaced by an error)."""
        return self.response_state in _STARTED


_STARTED = frozenset((STREAMING, DONE, TUNNEL, ABORTED))
