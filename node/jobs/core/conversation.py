"""The job conversation, sans-io: each end of a job stream (`/rain/job`), a task session
(`/rain/tasks`) or a held result (`/rain/result`) as a plain object that keeps the protocol's
rules, in the manner of h11's `Connection`.

The trio code hands it every message it is about to write (`send`, which returns the message to
write) and every message it read (`receive`, which returns what that message means: the message
itself, or a checked event below for those that carry a payload to decode). Each call moves the
conversation's `state`. A message the rules do not allow where the conversation stands is refused
by the call that met it, and the error says whose fault it is:
- `receive` raises `RemoteProtocolError`: the peer broke the protocol; the state becomes ERROR,
  for good (the stream is closed; nothing it says afterwards counts);
- `send` and the local events raise `LocalProtocolError`: our own code broke the rules (a bug);
  the state does not change.
When the stream ends (closed, reset, or the peer silent past the caller's patience), `peer_gone`
says how the attempt ended: nothing lost, lost (run it elsewhere), paid and the result still
owed, or running on and held for the requester's return.

The rules. A job (Kind.JOB):

    requester                 state (both ends)         worker
    Offer ------------------> IDLE -> OFFERED/CHECKING
                              OFFERED   <- LedgerFrame(ChainRequest) ... -> LedgerFrame(ChainPage)
                <------------ Accept: -> INPUTS (the offer had inputs) or RUNNING;
                              Decline: -> DECLINED
    InputChunk ... InputDone  INPUTS -> RUNNING
                <------------ RUNNING: Progress, Output ...; Finished -> RESULT_OFFERED
    Settle(Agree) ----------> RESULT_OFFERED -> PAID (fetched) or DONE (a replica paid, not
                              fetched) | Settle(Refuse) -> REFUSED
                <------------ PAID: OutputChunk ... OutputDone -> DONE
    Cancel -----------------> while RUNNING: the worker stops the job, and its Finished claims
                              what the job used (paid as any result); elsewhere: CANCELLED
    Hold -------------------> while RUNNING, a group job's only (node.mpi): frozen or thawed

A task session (Kind.SESSION) is admitted like a job (OFFERED/CHECKING, Accept -> OPEN), then:

    Tasks (1..MAX_BATCH) ---> OPEN -> RUNNING: Progress; Output only for a lone task;
                              Cancel(its job id)
                <------------ TasksDone (one per task, in order) -> OPEN; claimed ones wait
    Collect ----------------> OPEN (some claimed) -> COLLECTING
                <------------ Finished (the group: its tasks are the claimed ones) ->
                              RESULT_OFFERED; Settle as for a job; PAID ... OutputDone -> OPEN
                              (a refused group: REFUSED, the session is over)
    A Cancel the worker reads in OPEN named a task that just ended: nothing to do.

A held result (Kind.HELD, `/rain/result`) starts where a job's Finished goes out: RUNNING ->
Finished -> RESULT_OFFERED -> Settle -> PAID ... OutputDone -> DONE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ledger.messages import Agree, ChainRequest, Propose, Refuse, decode_message, encode_message
from node.faults import blamed_on_peer
from node.jobs.core import terms
from rainnet import jobproto, wire
from rainnet.jobproto import (
    Accept,
    Cancel,
    Collect,
    Decline,
    Finished,
    Hold,
    InputChunk,
    InputDone,
    Offer,
    Output,
    OutputChunk,
    OutputDone,
    Progress,
    Settle,
    Tasks,
    TasksDone,
)
from rainnet.ledgerproto import LedgerFrame
from sandbox import JobSpec, SpecError
from sandbox.job import check_job_id
from sandbox.spec import check_relative_path

MAX_CHAIN_ASKS = 4096  # pages of its chain a requester serves a worker weighing one offer


class Kind(enum.Enum):
    JOB = "job"
    SESSION = "session"
    HELD = "held"


class State(enum.Enum):
    IDLE = "idle"  # nothing said yet
    OFFERED = "offered"  # requester: the offer is out, its answer awaited
    CHECKING = "checking"  # worker: the offer is in, being weighed (chain pages asked for)
    INPUTS = "inputs"  # accepted; the job's input files travel
    RUNNING = "running"  # the job (or a batch of tasks) runs at the worker
    OPEN = "open"  # a task session between tasks
    COLLECTING = "collecting"  # a session's claimed tasks asked for, their group's claim awaited
    RESULT_OFFERED = "result-offered"  # the worker's signed claim awaits the requester's answer
    PAID = "paid"  # agreed: the result's files travel
    DONE = "done"
    DECLINED = "declined"
    REFUSED = "refused"  # the requester would not pay
    CANCELLED = "cancelled"
    CLOSED = "closed"  # the stream ended where nothing was owed
    ERROR = "error"  # the peer broke the protocol


TERMINAL = frozenset(
    {State.DONE, State.DECLINED, State.REFUSED, State.CANCELLED, State.CLOSED, State.ERROR}
)

Msg = type[wire.Message]

# What each end may receive and send in each state; anything else is refused (see above). Kind
# and content narrow these further in the code (a Finished ends a job's RUNNING, a TasksDone a
# session's; a session's Output comes from a lone task only).
REQUESTER_RECEIVES: dict[State, tuple[Msg, ...]] = {
    State.OFFERED: (LedgerFrame, Accept, Decline),
    State.RUNNING: (Progress, Output, Finished, TasksDone),
    State.COLLECTING: (Finished,),
    State.PAID: (OutputChunk, OutputDone),
}
REQUESTER_SENDS: dict[State, tuple[Msg, ...]] = {
    State.IDLE: (Offer,),
    State.OFFERED: (LedgerFrame, Cancel),
    State.INPUTS: (InputChunk, InputDone, Cancel),
    State.OPEN: (Tasks, Collect),
    State.RUNNING: (Cancel, Hold),
    State.RESULT_OFFERED: (Settle, Cancel),
    State.PAID: (Cancel,),
}
WORKER_RECEIVES: dict[State, tuple[Msg, ...]] = {
    State.IDLE: (Offer,),
    State.CHECKING: (LedgerFrame, Cancel),
    State.INPUTS: (InputChunk, InputDone),
    State.OPEN: (Tasks, Collect, Cancel),
    State.RUNNING: (Cancel, Hold),
    State.RESULT_OFFERED: (Settle, Cancel),
}
WORKER_SENDS: dict[State, tuple[Msg, ...]] = {
    State.CHECKING: (LedgerFrame, Accept, Decline),
    State.RUNNING: (Progress, Output, Finished, TasksDone),
    State.COLLECTING: (Finished,),
    State.PAID: (OutputChunk, OutputDone),
}


class Ending(enum.Enum):
    """How an attempt stood when its stream ended (`peer_gone`)."""

    NOTHING_LOST = "nothing-lost"  # nothing ran or was owed (or it had ended)
    LOST = "lost"  # requester: the job did not finish there, nothing was paid: run it elsewhere
    PAID_AWAITING_RESULT = "paid-awaiting-result"  # requester: paid; the worker holds the result
    RUNS_ON = "runs-on"  # worker: the job runs on; its result will be held for the requester
    HELD = "held"  # worker: a claimed result is held for the requester's return


# ----- checked events: what `receive` returns for messages carrying a payload -----------------


@dataclass(frozen=True)
class ChainAsked:
    """The worker asks for pages of our chain before it answers the offer: serve `request`."""

    request: ChainRequest


@dataclass(frozen=True)
class ResultOffered:
    """The worker's result and its signed claim (decoded): check it (node.jobs.core.results),
    then answer with `settle`."""

    finished: Finished
    proposal: Propose


@dataclass(frozen=True)
class OfferReceived:
    """An offer, its spec decoded; `problem` says why it is invalid (decline it), or None."""

    offer: Offer
    spec: JobSpec | None
    problem: str | None


@dataclass(frozen=True)
class TasksReceived:
    """A batch of tasks for the session, each of its shape, without files, ids unique."""

    tasks: Tasks
    specs: tuple[JobSpec, ...]


@dataclass(frozen=True)
class SettleReceived:
    """The requester's answer to our claim: an agreement to store (then `agreement_stored`), or
    a refusal with its reason."""

    answer: Agree | Refuse


class _Conversation:
    """What both ends share: the state, the rule tables, and the way a refusal is raised."""

    _receives: dict[State, tuple[Msg, ...]]
    _sends: dict[State, tuple[Msg, ...]]

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.state = State.RUNNING if kind is Kind.HELD else State.IDLE
        self.error: str | None = None
        self._inputs = False  # the offer brought input files
        self.batch: tuple[str, ...] = ()  # a session: the tasks out now, in order
        self.claimed: list[str] = []  # a session: tasks claimed, not yet in a group's claim

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    def receive(self, msg: wire.Message) -> Any:
        """What `msg`, just read, means (the message, or a checked event); RemoteProtocolError
        (and the ERROR state, for good) if the rules do not allow it here."""
        try:
            return self._receive(msg)
        except wire.RemoteProtocolError as exc:
            self.state, self.error = State.ERROR, str(exc)
            raise

    def _receive(self, msg: wire.Message) -> Any:
        raise NotImplementedError

    def _remote(self, why: str) -> wire.RemoteProtocolError:
        return wire.RemoteProtocolError(why)

    def _allowed_in(self, msg: wire.Message) -> None:
        if not isinstance(msg, self._receives.get(self.state, ())):
            raise self._remote(f"{msg.TYPE} while {self._where()}")

    def _may_send(self, msg: wire.Message) -> None:
        if not isinstance(msg, self._sends.get(self.state, ())):
            raise wire.LocalProtocolError(f"cannot send {msg.TYPE} while {self._where()}")

    def _where(self) -> str:
        return f"the {self.kind.value} is {self.state.value}"

    def _passes(self, msg: wire.Message) -> str | None:
        """The move both ends make for a message that passes between them, whichever end
        sends it; why it breaks the rules (the caller says whose fault), or None."""
        if isinstance(msg, Accept):
            if self.kind is Kind.SESSION:
                self.state = State.OPEN
            else:
                self.state = State.INPUTS if self._inputs else State.RUNNING
        elif isinstance(msg, Decline):
            self.state = State.DECLINED
        elif isinstance(msg, InputDone):
            self.state = State.RUNNING
        elif isinstance(msg, Output):
            if self.kind is Kind.SESSION and len(self.batch) != 1:
                return "output of a batch of several tasks streamed live"
        elif isinstance(msg, Tasks):
            return self._tasks_out(tuple(t.job_id for t in msg.tasks))
        elif isinstance(msg, TasksDone):
            if self.kind is not Kind.SESSION:
                return "tasks done on a job's stream"
            if tuple(d.job_id for d in msg.done) != self.batch:
                return "the tasks done are not the tasks handed over"
            self.claimed += [d.job_id for d in msg.done if d.claimed]
            self.batch, self.state = (), State.OPEN
        elif isinstance(msg, Collect):
            if not self.claimed:
                return "collect with no task claimed"
            self.state = State.COLLECTING
        elif isinstance(msg, OutputDone):
            self.state = State.OPEN if self.kind is Kind.SESSION else State.DONE
        elif isinstance(msg, Hold) and self.kind is Kind.SESSION:
            return "a hold on a task session (groups hold a job's stream)"
        return None

    def _tasks_out(self, ids: tuple[str, ...]) -> str | None:
        if self.kind is not Kind.SESSION:
            return "tasks go on a task session only"
        if not ids or len(set(ids)) != len(ids):
            return "a batch of tasks with none, or one twice"
        if len(self.claimed) + len(ids) > jobproto.MAX_GROUP:
            return f"more than {jobproto.MAX_GROUP} tasks unsettled"
        if set(ids) & set(self.claimed):
            return "a task claimed already, handed over again"
        self.batch, self.state = ids, State.RUNNING
        return None

    def _sent(self, msg: wire.Message) -> None:
        why = self._passes(msg)
        if why is not None:
            raise wire.LocalProtocolError(why)

    def _received(self, msg: wire.Message) -> None:
        why = self._passes(msg)
        if why is not None:
            raise self._remote(why)


class RequesterConversation(_Conversation):
    """Our end as the requester. `own_key`: our ledger public key (only our chain is served)."""

    _receives = REQUESTER_RECEIVES
    _sends = REQUESTER_SENDS

    def __init__(self, kind: Kind, own_key: bytes) -> None:
        super().__init__(kind)
        self._own_key = own_key
        self._owed_pages = 0
        self._chain_asks = 0
        self.accept: Accept | None = None
        self.cancel_sent = False

    def send(self, msg: wire.Message) -> wire.Message:
        self._may_send(msg)
        if isinstance(msg, Offer):
            if self.kind is Kind.SESSION and msg.inputs:
                raise wire.LocalProtocolError("a task session's offer brings no files")
            self._inputs = bool(msg.inputs)
            self.state = State.OFFERED
        elif isinstance(msg, LedgerFrame):
            if not self._owed_pages:
                raise wire.LocalProtocolError("a chain page nobody asked for")
            self._owed_pages -= 1
        elif isinstance(msg, Cancel):
            self._send_cancel(msg)
        elif isinstance(msg, Settle):
            raise wire.LocalProtocolError("a Settle is made by settle()")
        else:
            self._sent(msg)
        return msg

    def _send_cancel(self, msg: Cancel) -> None:
        if self.kind is Kind.SESSION:
            if self.state is not State.RUNNING or msg.job_id not in self.batch:
                raise wire.LocalProtocolError("a session's Cancel names a task out now")
        elif self.state is State.RUNNING:
            # The worker stops the job and claims what it used: the conversation goes on to
            # that claim, which is settled like any result (node.jobs.core.standing).
            self.cancel_sent = True
        else:
            self.state = State.CANCELLED

    def settle(self, answer: Agree | Refuse, fetch: bool = True) -> Settle:
        """The Settle answering the result offered: an agreement (then the result's files come,
        or with `fetch` False nothing more: a replica paid whose copy is not needed) or a
        refusal."""
        if self.state is not State.RESULT_OFFERED:
            raise wire.LocalProtocolError(f"nothing to settle while {self._where()}")
        if isinstance(answer, Refuse):
            self.state = State.REFUSED
        elif fetch:
            self.state = State.PAID
        elif self.kind is Kind.SESSION:
            raise wire.LocalProtocolError("a session's group is always fetched")
        else:
            self.state = State.DONE
        return Settle(answer=encode_message(answer))

    def _receive(self, msg: wire.Message) -> wire.Message | ChainAsked | ResultOffered:
        if self.ended:
            raise self._remote(f"{msg.TYPE} after the {self.kind.value} ended")
        self._allowed_in(msg)
        if isinstance(msg, LedgerFrame):
            return self._chain_asked(msg)
        if isinstance(msg, Finished):
            return self._result(msg)
        if isinstance(msg, Accept):
            self.accept = msg
        self._received(msg)
        return msg

    def _chain_asked(self, msg: LedgerFrame) -> ChainAsked:
        with blamed_on_peer("ledger"):
            request = decode_message(msg.body, (ChainRequest,))
        assert isinstance(request, ChainRequest)
        if request.public_key != self._own_key:
            raise self._remote("asked for another chain than ours")
        self._chain_asks += 1
        if self._chain_asks > MAX_CHAIN_ASKS:
            raise self._remote(f"more than {MAX_CHAIN_ASKS} chain requests for one offer")
        self._owed_pages += 1
        return ChainAsked(request)

    def _result(self, msg: Finished) -> ResultOffered:
        if self.state is State.RUNNING and self.kind is Kind.SESSION:
            raise self._remote("a task session's result before Collect")
        if self.state is State.COLLECTING and not msg.tasks:
            raise self._remote("a job's result where a group's was asked for")
        if self.kind is Kind.JOB and msg.tasks:
            raise self._remote("a group's result for a job")
        proposal = terms.propose_from(msg.proposal)
        if self.state is State.COLLECTING:
            self.claimed = []
        self.state = State.RESULT_OFFERED
        return ResultOffered(msg, proposal)

    def peer_gone(self) -> Ending:
        """The stream ended (closed, reset, or silent past our patience): how it stood."""
        if self.state is State.PAID:
            ending = Ending.PAID_AWAITING_RESULT
        elif self.ended or (self.state in (State.IDLE, State.OPEN) and not self.claimed):
            ending = Ending.NOTHING_LOST
        else:
            ending = Ending.LOST
        if not self.ended:
            self.state = State.CLOSED
        return ending


class WorkerConversation(_Conversation):
    """Our end as the worker. `max_input_total`: bytes of inputs per job this worker takes."""

    _receives = WORKER_RECEIVES
    _sends = WORKER_SENDS

    def __init__(self, kind: Kind, max_input_total: int = 1 << 62) -> None:
        super().__init__(kind)
        self._max_input_total = max_input_total
        self._asked = 0
        self.offer: Offer | None = None
        self.shape: JobSpec | None = None  # a session: what each task must be like
        self._proposal: Propose | None = None  # our claim on the result offered

    def _receive(
        self, msg: wire.Message
    ) -> wire.Message | OfferReceived | TasksReceived | SettleReceived:
        if self.ended:
            raise self._remote(f"{msg.TYPE} after the {self.kind.value} ended")
        self._allowed_in(msg)
        if isinstance(msg, Offer):
            return self._offer(msg)
        if isinstance(msg, Tasks):
            return self._tasks(msg)
        if isinstance(msg, Settle):
            return self._settle(msg)
        if isinstance(msg, LedgerFrame):
            if not self._asked:
                raise self._remote("a chain page nobody asked for")
            self._asked -= 1
        elif isinstance(msg, Cancel):
            if self.kind is not Kind.SESSION and self.state is not State.RUNNING:
                self.state = State.CANCELLED
        else:
            self._received(msg)
        return msg

    def _offer(self, offer: Offer) -> OfferReceived:
        self.offer, self.state = offer, State.CHECKING
        self._inputs = bool(offer.inputs)  # (the Accept leads to INPUTS, then)
        try:
            # The id names directories here (and a cgroup, a container): a plain name only.
            check_job_id(offer.job_id)
            spec = terms.spec_from(offer.spec)
            for entry in offer.inputs:
                check_relative_path("inputs", entry.path)
            if sum(e.size for e in offer.inputs) > self._max_input_total:
                raise SpecError("inputs", f"more than {self._max_input_total >> 20} MiB of inputs")
            if self.kind is Kind.SESSION and (offer.inputs or terms.has_files(spec)):
                raise SpecError("inputs", "a task session carries jobs without files")
        except SpecError as exc:
            return OfferReceived(offer, None, f"invalid job: {exc}")
        self.shape = spec
        return OfferReceived(offer, spec, None)

    def _tasks(self, msg: Tasks) -> TasksReceived:
        assert self.shape is not None
        specs = []
        for task in msg.tasks:
            try:
                check_job_id(task.job_id)
                spec = terms.spec_from(task.spec)
            except SpecError as exc:
                raise self._remote(f"task {task.job_id[:64]!r}: {exc}") from None
            if terms.shape(spec) != terms.shape(self.shape) or terms.has_files(spec):
                raise self._remote(f"task {task.job_id}: not of the session's shape")
            specs.append(spec)
        self._received(msg)
        return TasksReceived(msg, tuple(specs))

    def _settle(self, msg: Settle) -> SettleReceived:
        with blamed_on_peer("settle"):
            answer = decode_message(msg.answer, (Agree, Refuse))
        assert isinstance(answer, Agree | Refuse)
        if isinstance(answer, Refuse):
            # A session goes on (its requester may collect the next group); a job is over.
            self.state = State.OPEN if self.kind is Kind.SESSION else State.REFUSED
        return SettleReceived(answer)

    def send(self, msg: wire.Message) -> wire.Message:
        self._may_send(msg)
        if isinstance(msg, LedgerFrame):
            self._asked += 1
        elif isinstance(msg, Finished):
            self._send_result(msg)
        else:
            self._sent(msg)
        return msg

    def _send_result(self, msg: Finished) -> None:
        if self.kind is Kind.SESSION:
            if self.state is not State.COLLECTING:
                raise wire.LocalProtocolError("a session's group goes out on Collect")
            if sorted(t.job_id for t in msg.tasks) != sorted(self.claimed):
                raise wire.LocalProtocolError("a group's tasks are the ones claimed")
            self.claimed = []
        elif msg.tasks and self.kind is Kind.JOB:
            raise wire.LocalProtocolError("a group's result on a job's stream")
        self._proposal = terms.propose_from(msg.proposal)
        self.state = State.RESULT_OFFERED

    def agreement_stored(self, proposal_hash: bytes) -> None:
        """Our ledger stored the requester's agreement, which countersigns the proposal with
        `proposal_hash`: only an agreement to the very claim we offered releases the result
        (one to another of ours must not buy these files)."""
        if self.state is not State.RESULT_OFFERED or self._proposal is None:
            raise wire.LocalProtocolError(f"no claim awaits an agreement while {self._where()}")
        if proposal_hash != self._proposal.block.hash:
            self.state = State.ERROR
            raise self._remote("the agreement is for another of our proposals")
        self.state = State.PAID

    def proposal(self) -> Propose:
        """Our claim on the result offered now."""
        if self._proposal is None:
            raise wire.LocalProtocolError("no result offered")
        return self._proposal

    def peer_gone(self) -> Ending:
        """The stream ended: a job that runs runs on (its result held), a claim offered or paid
        is held for the requester's return; otherwise nothing was owed."""
        if self.kind is Kind.HELD and self.state is not State.DONE:
            ending = Ending.HELD  # (it stays on disk until released or refused)
        elif self.state is State.RUNNING:
            ending = Ending.RUNS_ON
        elif self.state in (State.RESULT_OFFERED, State.PAID, State.COLLECTING) or (
            self.state is State.OPEN and self.claimed
        ):
            ending = Ending.HELD
        else:
            ending = Ending.NOTHING_LOST
        if not self.ended:
            self.state = State.CLOSED
        return ending
