"""The worker: others' jobs, admitted, run in the sandbox, claimed and released once paid."""

from node.jobs.worker.worker import Worker

__all__ = ["Worker"]
