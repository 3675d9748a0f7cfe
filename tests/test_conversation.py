"""The job conversation, sans-io (node.jobs.core.conversation): both ends driven against each
other in memory, message by message, through every state; how each ending is classified; and
hypothesis-made message orders and malformed messages, which only ever reach the ERROR state
through RemoteProtocolError."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.block import JobLimits
from ledger.exchange import make_agreement, make_proposal
from ledger.messages import (
    Agree,
    ChainPage,
    ChainRequest,
    Propose,
    Refuse,
    encode_message,
)
from node.jobs.core import results, terms
from node.jobs.core.conversation import (
    REQUESTER_RECEIVES,
    WORKER_RECEIVES,
    ChainAsked,
    Ending,
    Kind,
    OfferReceived,
    RequesterConversation,
    ResultOffered,
    SettleReceived,
    State,
    TasksReceived,
    WorkerConversation,
)
from node.ledger_link import frame
from rainnet import jobproto, wire
from rainnet.identity import Identity
from rainnet.ledgerproto import LedgerFrame
from sandbox import JobSpec, Limits

REQUESTER = Identity.generate()
WORKER = Identity.generate()
SPEC = JobSpec.create(["true"], limits=Limits(wall_seconds=10))
LIMITS = terms.job_limits(SPEC)


def _offer(job_id: str = "job1", inputs: Sequence[jobproto.FileEntry] = ()) -> jobproto.Offer:
    return jobproto.Offer(job_id, 1, terms.pack_spec(SPEC), tuple(inputs), 15.0, b"")


def _accept() -> jobproto.Accept:
    return jobproto.Accept(lease_seconds=15.0, backend="native", chain_verified=0)


def _entries(out: bytes = b"hi\n") -> tuple[jobproto.FileEntry, ...]:
    return (results.entry(results.STDOUT, out), results.entry(results.STDERR, b""))


def _proposal(claim_id: str, result_hash: bytes, cpu_ms: int = 100) -> Propose:
    block = make_proposal(
        WORKER,
        None,
        requester=REQUESTER.public_raw,
        job_id=claim_id,
        cpu_ms=cpu_ms,
        gpu_ms=0,
        limits=JobLimits(cpus_milli=1000, gpus=0, wall_ms=10_000 * 16),
        result_hash=result_hash,
        time_ms=1,
    )
    return Propose(block)


def _finished(claim_id: str = "job1") -> tuple[jobproto.Finished, Propose]:
    entries = _entries()
    rhash = results.result_hash(results.Verdict(0, "ok"), entries)
    proposal = _proposal(claim_id, rhash)
    msg = jobproto.Finished(0, "ok", 0.1, 0.2, 1, rhash, entries, encode_message(proposal))
    return msg, proposal


def _agree(proposal: Propose) -> Agree:
    return Agree(make_agreement(REQUESTER, None, proposal.block))


def _group(task_ids: Sequence[str]) -> tuple[jobproto.Finished, Propose]:
    tasks = []
    outputs: list[jobproto.FileEntry] = []
    for job_id in task_ids:
        entries = _entries(job_id.encode())
        rhash = results.result_hash(results.Verdict(0, "ok"), entries)
        tasks.append(jobproto.TaskResult(job_id, 0, "ok", 10, 0.1, 1, rhash, len(entries)))
        outputs += entries
    ghash = results.group_hash(tasks)
    proposal = _proposal("claim1", ghash, cpu_ms=10 * len(tasks))
    msg = jobproto.Finished(
        None, "group", 0.1, 0.1, 1, ghash, tuple(outputs), encode_message(proposal), tuple(tasks)
    )
    return msg, proposal


def _pair(kind: Kind) -> tuple[RequesterConversation, WorkerConversation]:
    return RequesterConversation(kind, REQUESTER.public_raw), WorkerConversation(kind)


def _to_worker(req: RequesterConversation, wrk: WorkerConversation, msg: wire.Message) -> Any:
    """What `req` sends, as `wrk` receives it (through the wire codec, as on a stream)."""
    sent = req.send(msg)
    return wrk.receive(wire.decode_payload(wire.encode_payload(sent)))


def _to_requester(wrk: WorkerConversation, req: RequesterConversation, msg: wire.Message) -> Any:
    sent = wrk.send(msg)
    return req.receive(wire.decode_payload(wire.encode_payload(sent)))


def test_a_job_from_offer_to_release_through_every_state() -> None:
    req, wrk = _pair(Kind.JOB)
    entry = jobproto.FileEntry("data.csv", 3, bytes(32))
    got = _to_worker(req, wrk, _offer(inputs=[entry]))
    assert isinstance(got, OfferReceived) and got.problem is None and got.spec == SPEC
    assert (req.state, wrk.state) == (State.OFFERED, State.CHECKING)
    # The worker asks for a page of the requester's chain, and is served.
    ask = ChainRequest(REQUESTER.public_raw, 0, 16)
    asked = _to_requester(wrk, req, frame(ask))
    assert isinstance(asked, ChainAsked) and asked.request == ask
    page = ChainPage(REQUESTER.public_raw, 0, (), (), 0)
    assert isinstance(_to_worker(req, wrk, frame(page)), LedgerFrame)
    _to_requester(wrk, req, _accept())
    assert (req.state, wrk.state) == (State.INPUTS, State.INPUTS)
    _to_worker(req, wrk, jobproto.InputChunk(0, 0, b"a,b"))
    _to_worker(req, wrk, jobproto.InputDone())
    assert (req.state, wrk.state) == (State.RUNNING, State.RUNNING)
    _to_requester(wrk, req, jobproto.Progress("running", 0.05, 2.0))
    _to_requester(wrk, req, jobproto.Output("stdout", b"hi\n"))
    finished, proposal = _finished()
    offered = _to_requester(wrk, req, finished)
    assert isinstance(offered, ResultOffered) and offered.proposal == proposal
    assert (req.state, wrk.state) == (State.RESULT_OFFERED, State.RESULT_OFFERED)
    settled = wrk.receive(req.settle(_agree(proposal)))
    assert isinstance(settled, SettleReceived) and isinstance(settled.answer, Agree)
    wrk.agreement_stored(proposal.block.hash)
    assert (req.state, wrk.state) == (State.PAID, State.PAID)
    _to_requester(wrk, req, jobproto.OutputChunk(0, 0, b"hi\n"))
    _to_requester(wrk, req, jobproto.OutputDone())
    assert (req.state, wrk.state) == (State.DONE, State.DONE)
    assert req.peer_gone() is Ending.NOTHING_LOST and wrk.peer_gone() is Ending.NOTHING_LOST


def test_a_job_without_inputs_runs_at_once_and_a_replica_may_be_paid_unfetched() -> None:
    req, wrk = _pair(Kind.JOB)
    _to_worker(req, wrk, _offer())
    _to_requester(wrk, req, _accept())
    assert (req.state, wrk.state) == (State.RUNNING, State.RUNNING)
    finished, proposal = _finished()
    _to_requester(wrk, req, finished)
    wrk.receive(req.settle(_agree(proposal), fetch=False))
    assert req.state is State.DONE  # nothing more comes: its copy is not needed


def test_a_decline_ends_the_offer_on_both_sides() -> None:
    req, wrk = _pair(Kind.JOB)
    _to_worker(req, wrk, _offer())
    declined = _to_requester(wrk, req, jobproto.Decline("busy", 5.0))
    assert declined == jobproto.Decline("busy", 5.0)
    assert (req.state, wrk.state) == (State.DECLINED, State.DECLINED)
    with pytest.raises(wire.RemoteProtocolError):
        req.receive(_accept())  # nothing counts after the end
    assert req.state is State.ERROR


def test_an_invalid_offer_is_reported_for_a_decline_not_raised() -> None:
    _, wrk = _pair(Kind.JOB)
    bad = jobproto.Offer("../etc", 1, terms.pack_spec(SPEC), (), 15.0, b"")
    got = wrk.receive(bad)
    assert isinstance(got, OfferReceived) and got.spec is None
    assert got.problem is not None and "job_id" in got.problem
    wrk.send(jobproto.Decline(got.problem, 0))
    assert wrk.state is State.DECLINED
    session = WorkerConversation(Kind.SESSION)
    entry = jobproto.FileEntry("x", 1, bytes(32))
    got = session.receive(_offer(inputs=[entry]))
    assert isinstance(got, OfferReceived) and "without files" in (got.problem or "")
    big = WorkerConversation(Kind.JOB, max_input_total=2)
    got = big.receive(_offer(inputs=[jobproto.FileEntry("x", 3, bytes(32))]))
    assert isinstance(got, OfferReceived) and "MiB of inputs" in (got.problem or "")


def test_a_refused_claim_ends_the_job() -> None:
    req, wrk = _pair(Kind.JOB)
    _to_worker(req, wrk, _offer())
    _to_requester(wrk, req, _accept())
    finished, _ = _finished()
    _to_requester(wrk, req, finished)
    settled = wrk.receive(req.settle(Refuse("job1", "too dear")))
    assert isinstance(settled, SettleReceived) and isinstance(settled.answer, Refuse)
    assert (req.state, wrk.state) == (State.REFUSED, State.REFUSED)


def test_an_agreement_to_another_claim_releases_nothing() -> None:
    req, wrk = _pair(Kind.JOB)
    _to_worker(req, wrk, _offer())
    _to_requester(wrk, req, _accept())
    finished, _ = _finished()
    _to_requester(wrk, req, finished)
    other = _proposal("other-job", bytes(32))
    with pytest.raises(wire.RemoteProtocolError, match="another of our proposals"):
        wrk.agreement_stored(other.block.hash)
    assert wrk.state is State.ERROR
    with pytest.raises(wire.LocalProtocolError):
        wrk.send(jobproto.OutputChunk(0, 0, b"x"))  # the files stay withheld


@pytest.mark.parametrize(
    ("steps", "state"),
    [
        (0, State.OFFERED),
        (1, State.RUNNING),
        (2, State.RESULT_OFFERED),
    ],
)
def test_cancel_at_each_state_ends_the_job(steps: int, state: State) -> None:
    req, wrk = _pair(Kind.JOB)
    _to_worker(req, wrk, _offer())
    if steps >= 1:
        _to_requester(wrk, req, _accept())
    if steps >= 2:
        _to_requester(wrk, req, _finished()[0])
    assert req.state is state
    got = _to_worker(req, wrk, jobproto.Cancel("by its owner"))
    assert isinstance(got, jobproto.Cancel)
    if state is State.RUNNING:
        # The worker stops a running job and claims what it used: that claim is settled.
        assert (req.state, wrk.state) == (State.RUNNING, State.RUNNING) and req.cancel_sent
        finished, proposal = _finished()
        assert isinstance(_to_requester(wrk, req, finished), ResultOffered)
        wrk.receive(req.settle(_agree(proposal)))
        assert req.state is State.PAID
    else:
        assert (req.state, wrk.state) == (State.CANCELLED, State.CANCELLED)


@pytest.mark.parametrize(
    ("steps", "requester_ending", "worker_ending"),
    [
        (0, Ending.LOST, Ending.NOTHING_LOST),  # offered: run it elsewhere
        (1, Ending.LOST, Ending.RUNS_ON),  # running: the worker runs on and holds the result
        (2, Ending.LOST, Ending.HELD),  # claimed, not answered: nothing paid, the result held
        (3, Ending.PAID_AWAITING_RESULT, Ending.HELD),  # paid: the worker owes the files
    ],
)
def test_a_vanished_peer_at_each_state(
    steps: int, requester_ending: Ending, worker_ending: Ending
) -> None:
    req, wrk = _pair(Kind.JOB)
    _to_worker(req, wrk, _offer())
    if steps >= 1:
        _to_requester(wrk, req, _accept())
    if steps >= 2:
        finished, proposal = _finished()
        _to_requester(wrk, req, finished)
    if steps >= 3:
        wrk.receive(req.settle(_agree(proposal)))
        wrk.agreement_stored(proposal.block.hash)
    assert req.peer_gone() is requester_ending
    assert wrk.peer_gone() is worker_ending
    assert req.state is State.CLOSED and wrk.state is State.CLOSED


def test_a_task_session_runs_batches_and_settles_a_group() -> None:
    req, wrk = _pair(Kind.SESSION)
    _to_worker(req, wrk, _offer("session1"))
    _to_requester(wrk, req, _accept())
    assert (req.state, wrk.state) == (State.OPEN, State.OPEN)
    batch = jobproto.Tasks((jobproto.Task("t1", terms.pack_spec(SPEC)),))
    got = _to_worker(req, wrk, batch)
    assert isinstance(got, TasksReceived) and got.specs == (SPEC,)
    _to_requester(wrk, req, jobproto.Output("stdout", b"live, for a lone task"))
    _to_requester(wrk, req, jobproto.TasksDone((jobproto.TaskDone("t1", True),)))
    two = jobproto.Tasks(tuple(jobproto.Task(t, terms.pack_spec(SPEC)) for t in ("t2", "t3")))
    _to_worker(req, wrk, two)
    _to_worker(req, wrk, jobproto.Cancel("by its owner", job_id="t3"))
    with pytest.raises(wire.LocalProtocolError):
        wrk.send(jobproto.Output("stdout", b"a batch's output comes with its results"))
    done = (jobproto.TaskDone("t2", True), jobproto.TaskDone("t3", False))
    _to_requester(wrk, req, jobproto.TasksDone(done))
    assert req.claimed == ["t1", "t2"] == wrk.claimed
    _to_worker(req, wrk, jobproto.Collect())
    assert (req.state, wrk.state) == (State.COLLECTING, State.COLLECTING)
    finished, proposal = _group(["t1", "t2"])
    offered = _to_requester(wrk, req, finished)
    assert isinstance(offered, ResultOffered) and req.claimed == []
    allowed = {t: LIMITS.max_cpu_ms for t in ("t1", "t2")}
    assert (
        results.group_payment_problem(
            finished,
            proposal.block,
            allowed,
            WORKER.public_raw,
            1 << 20,
            dict.fromkeys(allowed, 60.0),
        )
        is None
    )
    wrk.receive(req.settle(_agree(proposal)))
    wrk.agreement_stored(proposal.block.hash)
    _to_requester(wrk, req, jobproto.OutputDone())
    assert (req.state, wrk.state) == (State.OPEN, State.OPEN)
    assert req.peer_gone() is Ending.NOTHING_LOST and wrk.peer_gone() is Ending.NOTHING_LOST


def test_a_session_keeps_its_rules() -> None:
    req, wrk = _pair(Kind.SESSION)
    _to_worker(req, wrk, _offer("session1"))
    _to_requester(wrk, req, _accept())
    with pytest.raises(wire.LocalProtocolError, match="collect"):
        req.send(jobproto.Collect())
    _to_worker(req, wrk, jobproto.Tasks((jobproto.Task("t1", terms.pack_spec(SPEC)),)))
    with pytest.raises(wire.RemoteProtocolError, match="not the tasks handed over"):
        req.receive(jobproto.TasksDone((jobproto.TaskDone("t9", True),)))
    # The worker side refuses a task not of the session's shape.
    req2, wrk2 = _pair(Kind.SESSION)
    _to_worker(req2, wrk2, _offer("session2"))
    _to_requester(wrk2, req2, _accept())
    other = JobSpec.create(["true"], limits=Limits(cpus=2, wall_seconds=10))
    with pytest.raises(wire.RemoteProtocolError, match="shape"):
        wrk2.receive(jobproto.Tasks((jobproto.Task("t1", terms.pack_spec(other)),)))
    assert wrk2.state is State.ERROR


def test_a_session_lost_with_claims_unsettled() -> None:
    req, wrk = _pair(Kind.SESSION)
    _to_worker(req, wrk, _offer("session1"))
    _to_requester(wrk, req, _accept())
    _to_worker(req, wrk, jobproto.Tasks((jobproto.Task("t1", terms.pack_spec(SPEC)),)))
    _to_requester(wrk, req, jobproto.TasksDone((jobproto.TaskDone("t1", True),)))
    assert req.peer_gone() is Ending.LOST  # its claimed task runs again elsewhere
    assert wrk.peer_gone() is Ending.HELD  # and the worker holds the claimed result


def test_a_held_result_is_offered_then_released() -> None:
    req, wrk = _pair(Kind.HELD)
    finished, proposal = _finished()
    assert isinstance(_to_requester(wrk, req, finished), ResultOffered)
    wrk.receive(req.settle(_agree(proposal)))
    wrk.agreement_stored(proposal.block.hash)
    _to_requester(wrk, req, jobproto.OutputDone())
    assert (req.state, wrk.state) == (State.DONE, State.DONE)
    req2, wrk2 = _pair(Kind.HELD)
    _to_requester(wrk2, req2, finished)
    assert wrk2.peer_gone() is Ending.HELD


def test_our_own_misuse_is_a_local_error_and_changes_nothing() -> None:
    req, wrk = _pair(Kind.JOB)
    with pytest.raises(wire.LocalProtocolError):
        req.send(_accept())
    with pytest.raises(wire.LocalProtocolError):
        req.send(LedgerFrame(b""))  # a page nobody asked for
    with pytest.raises(wire.LocalProtocolError):
        req.settle(Refuse("job1", "nothing to settle"))
    with pytest.raises(wire.LocalProtocolError):
        wrk.send(jobproto.Finished(0, "ok", 0, 0, 0, bytes(32), (), b""))
    assert req.state is State.IDLE and wrk.state is State.IDLE


def test_a_chain_request_for_another_chain_is_the_workers_fault() -> None:
    req, wrk = _pair(Kind.JOB)
    _to_worker(req, wrk, _offer())
    ask = ChainRequest(WORKER.public_raw, 0, 16)
    with pytest.raises(wire.RemoteProtocolError, match="another chain"):
        req.receive(frame(ask))
    assert req.state is State.ERROR


# ----- any order, any content: the peer's fault, and only that --------------------------------

_finished_msg, _proposal_msg = _finished()
PLAUSIBLE: list[wire.Message] = [
    _offer(),
    _offer("job2", [jobproto.FileEntry("in", 1, bytes(32))]),
    jobproto.Offer("..", 1, b"\x00", (), 1.0, b""),
    _accept(),
    jobproto.Decline("no", 1.0),
    jobproto.InputChunk(0, 0, b"x"),
    jobproto.InputDone(),
    jobproto.Progress("running", 1.0, 1.0),
    jobproto.Output("stdout", b"x"),
    _finished_msg,
    jobproto.Finished(0, "ok", 0, 0, 0, bytes(32), (), b"not a proposal"),
    _group(["t1"])[0],
    jobproto.Settle(encode_message(_agree(_proposal_msg))),
    jobproto.Settle(encode_message(Refuse("job1", "no"))),
    jobproto.Settle(b"\x81\xa1t\xa1x"),
    jobproto.OutputChunk(0, 0, b"x"),
    jobproto.OutputDone(),
    jobproto.Cancel("x"),
    jobproto.Cancel("x", job_id="t1"),
    jobproto.Tasks((jobproto.Task("t1", terms.pack_spec(SPEC)),)),
    jobproto.Tasks((jobproto.Task("t1", b"junk"),)),
    jobproto.TasksDone((jobproto.TaskDone("t1", True),)),
    jobproto.Collect(),
    frame(ChainRequest(REQUESTER.public_raw, 0, 16)),
    frame(ChainRequest(WORKER.public_raw, 0, 16)),
    frame(ChainPage(REQUESTER.public_raw, 0, (), (), 0)),
    LedgerFrame(b"garbage"),
]


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(list(Kind)),
    requester_side=st.booleans(),
    messages=st.lists(st.sampled_from(PLAUSIBLE), max_size=12),
)
def test_any_order_of_messages_only_ever_errs_as_the_peers_fault(
    kind: Kind, requester_side: bool, messages: list[wire.Message]
) -> None:
    conv: RequesterConversation | WorkerConversation
    if requester_side:
        conv = RequesterConversation(kind, REQUESTER.public_raw)
        if kind is not Kind.HELD:
            conv.send(_offer("session1") if kind is Kind.SESSION else _offer())
    else:
        conv = WorkerConversation(kind)
    for msg in messages:
        before = conv.state
        try:
            conv.receive(msg)
        except wire.RemoteProtocolError:
            assert conv.state is State.ERROR
            return
        # A message taken was one the rules allow where the conversation stood.
        allowed = (REQUESTER_RECEIVES if requester_side else WORKER_RECEIVES).get(before, ())
        assert isinstance(msg, allowed)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), requester_side=st.booleans())
def test_malformed_bytes_never_escape_as_anything_but_the_peers_fault(
    body: bytes, requester_side: bool
) -> None:
    """Undecodable frames are the codec's RemoteProtocolError; decodable ones the rules'."""
    conv: RequesterConversation | WorkerConversation = (
        RequesterConversation(Kind.JOB, REQUESTER.public_raw)
        if requester_side
        else WorkerConversation(Kind.JOB)
    )
    if requester_side:
        conv.send(_offer())
    try:
        msg = wire.decode_payload(body)
    except wire.RemoteProtocolError:
        return
    try:
        conv.receive(msg)
    except wire.RemoteProtocolError:
        assert conv.state is State.ERROR
