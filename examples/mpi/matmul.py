"""A distributed matrix multiply C = A @ B: rank 0 scatters row blocks of A, broadcasts B,
gathers the blocks of C and checks them against numpy on one process.

    rain mpi run -n 4 --input examples/mpi/matmul.py -- python3 matmul.py [N]
"""

import sys
import time

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
n -= n % size  # whole row blocks
rows = n // size
a = b = None
if rank == 0:
    rng = np.random.default_rng(1)
    a, b = rng.random((n, n)), rng.random((n, n))
block = np.empty((rows, n))
comm.Scatter(a, block, root=0)
b = comm.bcast(b, root=0)
comm.Barrier()
start = time.perf_counter()
c_block = block @ b
elapsed = comm.reduce(time.perf_counter() - start, op=MPI.MAX, root=0)
c = np.empty((n, n)) if rank == 0 else None
comm.Gather(c_block, c, root=0)
if rank == 0:
    error = float(np.max(np.abs(c - a @ b)))
    gflops = 2 * n**3 / elapsed / 1e9
    print(f"C = A @ B, n={n}, {size} ranks: {gflops:.2f} Gflops, max error {error:.3g}")
