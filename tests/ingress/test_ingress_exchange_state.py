"""The exchange life cycle's tables, sans-IO: every legal move, every illegal one, whole paths."""

from __future__ import annotations

import itertools

import pytest
from netplane.ingress import exchange_state as st
from netplane.ingress.exchange_state import (
    REQUEST_EVENTS,
    REQUEST_TRANSITIONS,
    RESPONSE_EVENTS,
    RESPONSE_TRANSITIONS,
    ExchangeState,
    IllegalTransition,
)

ALL_EVENTS = sorted(REQUEST_EVENTS | RESPONSE_EVENTS)


def at(request: str = st.BODY, response: str = st.IDLE) -> ExchangeState:
    s = ExchangeState()
    # Tests only: put the machine in a given state without a path to it.
    s.request_state = request
    s.response_state = response
    return s


def test_an_exchange_starts_reading_its_body_with_no_response_yet():
    s = ExchangeState()
    assert (s.request_state, s.response_state) == (st.BODY, st.IDLE)
    assert not s.response_started


@pytest.mark.parametrize(
    ("state", "event", "new"),
    [(s, e, n) for s, moves in REQUEST_TRANSITIONS.items() for e, n in moves.items()],
)
def test_legal_request_moves(state, event, new):
    for response in RESPONSE_TRANSITIONS:  # the request side moves whatever the response does
        s = at(request=state, response=response)
        s.to(event)
        assert (s.request_state, s.response_state) == (new, response)


@pytest.mark.parametrize(
    ("state", "event", "new"),
    [(s, e, n) for s, moves in RESPONSE_TRANSITIONS.items() for e, n in moves.items()],
)
def test_legal_response_moves(state, event, new):
    for request in REQUEST_TRANSITIONS:
        s = at(request=request, response=state)
        s.to(event)
        assert (s.request_state, s.response_state) == (request, new)


@pytest.mark.parametrize(
    ("side", "state", "event"),
    [
        ("request", s, e)
        for s, e in itertools.product(REQUEST_TRANSITIONS, ALL_EVENTS)
        if e in REQUEST_EVENTS and e not in REQUEST_TRANSITIONS[s]
    ]
    + [
        ("response", s, e)
        for s, e in itertools.product(RESPONSE_TRANSITIONS, ALL_EVENTS)
        if e in RESPONSE_EVENTS and e not in RESPONSE_TRANSITIONS[s]
    ],
)
def test_illegal_moves_raise_naming_the_event_side_and_state(side, state, event):
    s = at(**{side: state})
    before = (s.request_state, s.response_state)
    with pytest.raises(IllegalTransition) as e:
        s.to(event)
    assert (e.value.event, e.value.side, e.value.state) == (event, side, state)
    assert event in str(e.value) and state in str(e.value) and side in str(e.value)
    assert (s.request_state, s.response_state) == before  # nothing moved


def test_an_unknown_event_is_illegal():
    with pytest.raises(IllegalTransition, match="NOT_AN_EVENT"):
        ExchangeState().to("NOT_AN_EVENT")


def test_the_tables_are_closed_and_every_state_is_reachable():
    assert not REQUEST_EVENTS & RESPONSE_EVENTS  # an event belongs to one side
    for table, start in ((REQUEST_TRANSITIONS, st.BODY), (RESPONSE_TRANSITIONS, st.IDLE)):
        targets = {n for moves in table.values() for n in moves.values()}
        assert targets <= set(table)  # every move lands on a state of the table
        seen, todo = {start}, [start]
        while todo:
            for n in table[todo.pop()].values():
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        assert seen == set(table)
    terminal = {s for s, moves in RESPONSE_TRANSITIONS.items() if not moves}
    assert terminal == {st.DONE, st.TUNNEL, st.ABORTED}
    assert {s for s, moves in REQUEST_TRANSITIONS.items() if not moves} == {
        st.RECEIVED,
        st.REFUSED,
    }


def run(*events: str) -> ExchangeState:
    s = ExchangeState()
    for e in events:
        s.to(e)
    return s


@pytest.mark.parametrize(
    ("events", "request_state", "response_state"),
    [
        # keep-alive GET on a pooled connection
        ((st.SEND, st.REQUEST_END, st.RESPONSE_HEAD, st.RESPONSE_END), st.RECEIVED, st.DONE),
        # a new connection, and an upstream that answers before the body is in
        ((st.CONNECT, st.SEND, st.RESPONSE_HEAD, st.RESPONSE_END), st.BODY, st.DONE),
        # a reused connection the endpoint had closed: once more on a fresh one
        ((st.SEND, st.REQUEST_END, st.RETRY, st.SEND, st.RESPONSE_HEAD), st.RECEIVED, st.STREAMING),
        # a route's own answer (404, redirect), body read and dropped afterwards
        ((st.ANSWER, st.REQUEST_END), st.RECEIVED, st.DONE),
        # 502 when no endpoint accepts
        ((st.REQUEST_END, st.CONNECT, st.ANSWER), st.RECEIVED, st.DONE),
        # a body over the limit while the upstream is being asked
        ((st.SEND, st.REFUSE, st.ANSWER), st.REFUSED, st.DONE),
        # a WebSocket upgrade
        ((st.REQUEST_END, st.SEND, st.SWITCH), st.RECEIVED, st.TUNNEL),
        # the client goes away mid-response
        ((st.SEND, st.RESPONSE_HEAD, st.ABORT), st.BODY, st.ABORTED),
    ],
)
def test_whole_life_cycles(events, request_state, response_state):
    s = run(*events)
    assert (s.request_state, s.response_state) == (request_state, response_state)


def test_a_response_cannot_be_replaced_once_it_has_begun():
    s = run(st.SEND, st.RESPONSE_HEAD)
    assert s.response_started
    with pytest.raises(IllegalTransition, match=r"ANSWER .* response is STREAMING"):
        s.to(st.ANSWER)
    with pytest.raises(IllegalTransition, match="RETRY"):
        s.to(st.RETRY)


def test_nothing_follows_the_end():
    s = run(st.SEND, st.REQUEST_END, st.RESPONSE_HEAD, st.RESPONSE_END)
    for event in ALL_EVENTS:
        with pytest.raises(IllegalTransition):
            s.to(event)
