"""An MPI group suspended together (node.jobs.core.holds), in memory: which members' jobs the
requester holds, what a worker reports, how long it keeps a hold; and the job conversation's
rule that a hold travels on a job's running stream only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.jobs.core.conversation import Kind, RequesterConversation, State
from node.jobs.core.holds import (
    HOLD_LIMIT,
    NEWS,
    Holds,
    MemberState,
    news,
    reported_state,
    wanted_holds,
)
from rainnet import jobproto, wire

STATES = st.sampled_from([s.value for s in MemberState])


@given(st.dictionaries(st.text(min_size=1, max_size=4), STATES, max_size=8))
def test_a_member_is_held_exactly_while_another_is_suspended(states: dict[str, str]) -> None:
    holds = wanted_holds(states)
    assert set(holds) == set(states)
    over = MemberState.ENDED.value in states.values()  # (a part ended: the group is over)
    for job, held in holds.items():
        others = [s for j, s in states.items() if j != job]
        assert held == (not over and MemberState.SUSPENDED.value in others)


def test_one_suspended_member_holds_the_others_and_its_return_lets_them_go() -> None:
    assert wanted_holds({"a": "suspended", "b": "running", "c": "held"}) == {
        "a": False,
        "b": True,
        "c": True,
    }
    # A held member reports "held", which holds nobody: once "a" runs, all go.
    assert wanted_holds({"a": "running", "b": "held", "c": "held"}) == dict.fromkeys("abc", False)
    # Two owners back: each holds the other (whoever resumes first stays frozen for the other).
    assert wanted_holds({"a": "suspended", "b": "suspended"}) == {"a": True, "b": True}
    # One member's part ended (given up): the group is over, and nobody stays frozen in it.
    assert wanted_holds({"a": "ended", "b": "held"}) == {"a": False, "b": False}


def test_a_worker_reports_held_only_when_its_group_alone_freezes_the_job() -> None:
    assert reported_state(True, True, False, "suspended") == "held"
    assert reported_state(True, True, True, "suspended") == "suspended"  # its owner's first
    assert reported_state(True, False, False, "suspended") == "suspended"
    assert reported_state(False, True, False, "running") == "running"  # (not frozen yet)


def test_a_hold_is_kept_from_its_first_moment_and_bounded() -> None:
    holds = Holds()
    holds.hold("j", 100.0)
    holds.hold("j", 200.0)  # (a repeated hold does not restart the clock)
    assert holds.held("j") and not holds.overdue("j", 100.0 + HOLD_LIMIT - 1)
    assert holds.overdue("j", 100.0 + HOLD_LIMIT)
    assert holds.release("j") and not holds.release("j") and not holds.held("j")
    assert not holds.overdue("j", 1e9)


def _running_job_conversation(kind: Kind) -> RequesterConversation:
    conv = RequesterConversation(kind, b"k" * 32)
    conv.state = State.OPEN if kind is Kind.SESSION else State.RUNNING
    return conv


def test_a_hold_travels_on_a_running_job_stream_only() -> None:
    hold = jobproto.Hold(on=True, reason="another member of its MPI group is suspended")
    assert _running_job_conversation(Kind.JOB).send(hold) is hold
    assert wire.decode_payload(wire.encode_payload(hold), jobproto.TO_WORKER) == hold
    with pytest.raises(wire.LocalProtocolError):
        _running_job_conversation(Kind.SESSION).send(hold)
    done = _running_job_conversation(Kind.JOB)
    done.state = State.RESULT_OFFERED
    with pytest.raises(wire.LocalProtocolError):
        done.send(hold)


def test_followers_are_told_of_freezes_and_resumes_only() -> None:
    said = "running"
    told = []
    for state in ["running", "exiting", "suspended", "suspended", "held", None, "exiting"]:
        line, said = news(state, said)
        told.append(line)
    assert told == [None, None, NEWS["suspended"], None, NEWS["held"], "resumed", None]
