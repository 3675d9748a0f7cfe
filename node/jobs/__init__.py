"""Jobs across the network: a requester hands jobs to workers, pays for them, fetches results.

- `core`: the pure rules both sides share (no trio, no I/O): the job conversation's state
  machines (`core.conversation`), the terms a claim is bounded by (`core.terms`), what a result
  is and when it is paid for (`core.results`), placement (`core.scheduler`) and replica voting
  (`core.voting`);
- `requester`: our end as the one whose jobs run elsewhere;
- `worker`: our end as the one that runs others' jobs in the sandbox;
- `transfer`: files in and out of a job over its stream, in hash-checked chunks.
The requester and the worker never import each other: what they share is in `core`.
"""
