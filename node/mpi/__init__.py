"""Ad-hoc MPI groups: `rain mpi run -n N -- CMD` across idle peers, launched by hydra.

- `assembly`: which peers form a group and whether its reservation holds (sans-io);
- `reservations`: a member's held slots and its admission of a group's job (sans-io);
- `groups`: the requester's side (reserve over /rain/mpi, launch each member's part as a job
  pinned to it, end the group); `control`: its control-socket operations;
- `member`: a member's side (the /rain/mpi handler, the worker's hook for group jobs);
- `agent`: `rain-mpi-agent`, the ssh-compatible program hydra's mpiexec calls per member;
- `hpl`: the ranks' program of `rain mpi bench`.
Each member's part reuses the job conversation of node.jobs.core, so it is admitted, followed,
paid and listed like any job.
"""
