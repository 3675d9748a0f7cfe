"""Heat diffusion on a 1-D rod, split into slabs: each step every rank swaps its edge cells
with its neighbours (halo exchange) and applies the explicit stencil. The total heat is
conserved (insulated ends): rank 0 prints it at the start and the end.

    rain mpi run -n 4 --input examples/mpi/heat.py -- python3 heat.py [CELLS] [STEPS]
"""

import sys

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
cells = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
local = cells // size
u = np.zeros(local + 2)  # with one halo cell each side
x = (rank * local + np.arange(local)) / cells
u[1:-1] = np.exp(-((x - 0.5) ** 2) / 0.005)  # a hot spot in the middle
left = rank - 1 if rank > 0 else MPI.PROC_NULL
right = rank + 1 if rank < size - 1 else MPI.PROC_NULL
before = comm.reduce(float(u[1:-1].sum()), root=0)
for _ in range(steps):
    comm.Sendrecv(u[1:2], dest=left, recvbuf=u[-1:], source=right)
    comm.Sendrecv(u[-2:-1], dest=right, recvbuf=u[0:1], source=left)
    if left == MPI.PROC_NULL:
        u[0] = u[1]  # insulated ends: no heat leaves
    if right == MPI.PROC_NULL:
        u[-1] = u[-2]
    u[1:-1] += 0.25 * (u[:-2] - 2 * u[1:-1] + u[2:])
after = comm.reduce(float(u[1:-1].sum()), root=0)
peak = comm.reduce(float(u[1:-1].max()), op=MPI.MAX, root=0)
if rank == 0:
    print(f"heat before {before:.6f}, after {after:.6f} ({steps} steps); peak now {peak:.4f}")
