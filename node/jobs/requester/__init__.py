"""The requester: our jobs, placed on workers, paid for, their results fetched and kept."""

from node.jobs.requester.requester import Requester

__all__ = ["Requester"]
