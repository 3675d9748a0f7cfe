"""Ad-hoc MPI groups (to come): `rain mpi run -n N -- CMD` across idle peers.

This room will hold: group assembly (a sans-io core: which idle peers that take MPI ranks and
reach each other directly form a group, reserved all-or-nothing with a lease), the launcher
agent hydra calls in place of ssh, and each member's end, which runs its ranks in the sandbox
and is paid for them per member. It reuses the job conversation of node.jobs.core.
"""
