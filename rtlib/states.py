"""The job state machine: the states and the only transitions allowed between them.

CREATED -> STAGING_IN -> STAGED_IN -> RUNNING -> RUN_DONE -> STAGING_OUT -> DONE.
PREEMPTED is first-class: a job whose worker vanished goes back to STAGED_IN
(its inputs are still on scratch) while its retry budget lasts, else FAILED.
HELD is where a staged job waits, never sent to a scheduler, while its
run would exceed its suballocation's remaining node-hour budget (the reason
is in the job's `error`); it goes back to STAGED_IN when the budget allows.
FAILED and CANCELLED are terminal until a person asks for a retry, which
starts the job again from CREATED. DONE is final.
"""

from __future__ import annotations

from enum import Enum

from .errors import IllegalTransition


class State(str, Enum):
    CREATED = "CREATED"
    STAGING_IN = "STAGING_IN"
    STAGED_IN = "STAGED_IN"
    RUNNING = "RUNNING"
    RUN_DONE = "RUN_DONE"
    STAGING_OUT = "STAGING_OUT"
    DONE = "DONE"
    FAILED = "FAILED"
    PREEMPTED = "PREEMPTED"
    HELD = "HELD"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


S = State
_STOPPABLE = {S.FAILED, S.CANCELLED}

TRANSITIONS: dict[State, frozenset[State]] = {
    S.CREATED: frozenset({S.STAGING_IN} | _STOPPABLE),
    S.STAGING_IN: frozenset({S.STAGED_IN} | _STOPPABLE),
    S.STAGED_IN: frozenset({S.RUNNING, S.HELD} | _STOPPABLE),
    S.HELD: frozenset({S.STAGED_IN} | _STOPPABLE),
    S.RUNNING: frozenset({S.RUN_DONE, S.PREEMPTED} | _STOPPABLE),
    S.RUN_DONE: frozenset({S.STAGING_OUT} | _STOPPABLE),
    S.STAGING_OUT: frozenset({S.DONE} | _STOPPABLE),
    S.PREEMPTED: frozenset({S.STAGED_IN} | _STOPPABLE),
    S.FAILED: frozenset({S.CREATED}),
    S.CANCELLED: frozenset({S.CREATED}),
    S.DONE: frozenset(),
}

TERMINAL = frozenset({S.DONE, S.FAILED, S.CANCELLED})
ACTIVE = frozenset(set(State) - TERMINAL)


def check_transition(current: State | str, new: State | str) -> None:
    """Raise IllegalTransition unless `current -> new` is in the table."""
    current, new = State(current), State(new)
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none (final state)"
        raise IllegalTransition(
            f"a job in {current.value} cannot move to {new.value}; allowed from {current.value}: {allowed}"
        )


def is_terminal(state: State | str) -> bool:
    return State(state) in TERMINAL
