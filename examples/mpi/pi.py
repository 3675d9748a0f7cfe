"""Monte-Carlo pi: each rank throws its own darts, rank 0 adds up the hits.

rain mpi run -n 4 --input examples/mpi/pi.py -- python3 pi.py [DARTS_PER_RANK]
"""

import sys

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
darts = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
rng = np.random.default_rng(12345 + rank)
xy = rng.random((darts, 2))
hits = int(np.count_nonzero((xy * xy).sum(axis=1) <= 1.0))
total = comm.reduce(hits, op=MPI.SUM, root=0)
if rank == 0:
    estimate = 4.0 * total / (darts * size)
    print(f"pi ~ {estimate:.6f} from {darts * size} darts on {size} ranks")
