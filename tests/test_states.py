"""The state machine: exactly the moves in the table are allowed."""

from __future__ import annotations

import itertools

import pytest

from rtlib.errors import IllegalTransition, RtlibError
from rtlib.states import ACTIVE, TERMINAL, TRANSITIONS, State, check_transition, is_terminal

S = State
ALLOWED = sorted((a, b) for a, targets in TRANSITIONS.items() for b in targets)
FORBIDDEN = sorted((a, b) for a, b in itertools.product(State, State) if b not in TRANSITIONS[a])

HAPPY_PATH = [S.CREATED, S.STAGING_IN, S.STAGED_IN, S.RUNNING, S.RUN_DONE, S.STAGING_OUT, S.DONE]


def test_every_state_has_a_row():
    assert set(TRANSITIONS) == set(State)


@pytest.mark.parametrize("current,new", ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_allowed_move(current, new):
    check_transition(current, new)
    check_transition(current.value, new.value)  # plain strings, as read from the store


@pytest.mark.parametrize("current,new", FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_forbidden_move_names_both_states_and_the_allowed_ones(current, new):
    with pytest.raises(IllegalTransition) as info:
        check_transition(current, new)
    msg = str(info.value)
    assert current.value in msg and new.value in msg
    if TRANSITIONS[current]:
        for allowed in TRANSITIONS[current]:
            assert allowed.value in msg
    else:
        assert "final" in msg


def test_illegal_transition_is_an_rtlib_error():
    with pytest.raises(RtlibError):
        check_transition(S.DONE, S.CREATED)


def test_happy_path_is_a_chain():
    for a, b in zip(HAPPY_PATH, HAPPY_PATH[1:]):
        check_transition(a, b)


def test_no_skipping_steps_of_the_happy_path():
    for i, a in enumerate(HAPPY_PATH):
        for b in HAPPY_PATH[i + 2 :]:
            with pytest.raises(IllegalTransition):
                check_transition(a, b)


def test_no_step_backwards_on_the_happy_path():
    for i, a in enumerate(HAPPY_PATH):
        for b in HAPPY_PATH[:i]:
            with pytest.raises(IllegalTransition):
                check_transition(a, b)


def test_terminal_states():
    assert TERMINAL == {S.DONE, S.FAILED, S.CANCELLED}
    assert ACTIVE == set(State) - TERMINAL
    for s in State:
        assert is_terminal(s) == (s in TERMINAL)
        assert is_terminal(s.value) == (s in TERMINAL)


def test_done_is_final():
    assert TRANSITIONS[S.DONE] == frozenset()
    for s in State:
        with pytest.raises(IllegalTransition, match="none"):
            check_transition(S.DONE, s)


@pytest.mark.parametrize("stopped", [S.FAILED, S.CANCELLED])
def test_failed_and_cancelled_only_restart_from_created(stopped):
    assert TRANSITIONS[stopped] == {S.CREATED}


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_every_active_state_can_fail_and_be_cancelled(state):
    check_transition(state, S.FAILED)
    check_transition(state, S.CANCELLED)


def test_preemption_returns_to_staged_in():
    check_transition(S.RUNNING, S.PREEMPTED)
    check_transition(S.PREEMPTED, S.STAGED_IN)  # inputs are still on scratch: no new stage-in
    assert TRANSITIONS[S.PREEMPTED] == {S.STAGED_IN, S.FAILED, S.CANCELLED}
    for not_running in (S.CREATED, S.STAGING_IN, S.STAGED_IN, S.RUN_DONE, S.STAGING_OUT):
        with pytest.raises(IllegalTransition):
            check_transition(not_running, S.PREEMPTED)


def test_unknown_state_name_is_refused():
    with pytest.raises(ValueError):
        check_transition("CREATED", "FLYING")


def test_state_prints_as_its_value():
    assert str(S.STAGED_IN) == "STAGED_IN"
    assert f"{S.RUN_DONE}" == "RUN_DONE"


def test_held_sits_between_staged_in_and_running():
    check_transition(S.STAGED_IN, S.HELD)  # over budget: never sent to the scheduler
    check_transition(S.HELD, S.STAGED_IN)  # budget raised: queued for a run again
    assert TRANSITIONS[S.HELD] == {S.STAGED_IN, S.FAILED, S.CANCELLED}
    assert S.HELD in ACTIVE
    for other in (S.CREATED, S.STAGING_IN, S.RUNNING, S.RUN_DONE, S.STAGING_OUT, S.PREEMPTED):
        with pytest.raises(IllegalTransition):
            check_transition(other, S.HELD)
    with pytest.raises(IllegalTransition):
        check_transition(S.HELD, S.RUNNING)  # a held job is re-checked against the budget first
