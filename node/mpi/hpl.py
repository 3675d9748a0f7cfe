"""An HPL-style benchmark for `rain mpi bench`, run as the ranks' program (numpy + mpi4py).

It solves A x = b for a random dense A of order N by LU factorisation with partial pivoting,
distributed by blocks of NB columns dealt round the ranks (1-D block-cyclic): the owner of each
panel factorises it (it holds whole columns) and broadcasts it with its pivots; every rank
swaps its rows, solves for its part of the panel's block row and updates its trailing columns
(a matrix multiply: where the time goes). b rides along as column N. Rank 0 then gathers U,
solves back, and checks the result as HPL does: the scaled residual
||Ax - b||_inf / (eps (||A||_inf ||x||_inf + ||b||_inf) N) must be below 16. The Gflops use
HPL's count, 2/3 N^3 + 3/2 N^2, over the factorisation and solve, and are printed in plain
decimals beside rank 0's machine solving the same system alone (numpy on one process).

    python3 hpl.py [N] [NB]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from mpi4py import MPI


def matrix(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    return rng.random((n, n)) - 0.5, rng.random(n) - 0.5


def main() -> None:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    nb = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    a, b = matrix(n)
    aug = np.hstack([a, b[:, None]])  # (each rank keeps only its columns below)
    blocks = [(j, min(j + nb, n)) for j in range(0, n, nb)]
    mine = [i for i in range(len(blocks)) if i % size == rank]
    cols = np.concatenate([np.arange(*blocks[i]) for i in mine] or [np.arange(0)])
    if rank == size - 1 or size == 1:
        cols = np.append(cols, n)  # b, as one more column
    local = np.asfortranarray(aug[:, cols])
    del aug, a
    position = {int(c): i for i, c in enumerate(cols)}

    single = None
    if rank == 0:  # one process of this member alone, for comparison
        a0, b0 = matrix(n)
        start = time.perf_counter()
        np.linalg.solve(a0, b0)
        single = time.perf_counter() - start
        del a0, b0
    comm.Barrier()
    start = time.perf_counter()
    for i, (j0, j1) in enumerate(blocks):
        owner = i % size
        if owner == rank:
            p0 = position[j0]
            panel = local[j0:, p0 : p0 + (j1 - j0)]
            pivots = np.empty(j1 - j0, dtype=np.int64)
            for k in range(j1 - j0):  # the panel, unblocked, with partial pivoting
                piv = k + int(np.argmax(np.abs(panel[k:, k])))
                pivots[k] = piv
                if piv != k:
                    panel[[k, piv]] = panel[[piv, k]]
                panel[k + 1 :, k] /= panel[k, k]
                panel[k + 1 :, k + 1 :] -= np.outer(panel[k + 1 :, k], panel[k, k + 1 :])
            message = (pivots, np.ascontiguousarray(panel))
        else:
            message = None
        pivots, panel = comm.bcast(message, root=owner)
        rest = [position[c] for c in range(j1, n + 1) if c in position]
        if not rest:
            continue
        lo, hi = rest[0], rest[-1] + 1  # (a rank's later columns are contiguous locally)
        trail = local[j0:, lo:hi]
        for k, piv in enumerate(pivots):
            if piv != k:
                trail[[k, piv]] = trail[[piv, k]]
        w = j1 - j0
        lower = np.tril(panel[:w], -1) + np.eye(w)
        trail[:w] = np.linalg.solve(lower, trail[:w])
        trail[w:] -= panel[w:] @ trail[:w]
    # Back substitution on rank 0 with U (and the updated b) gathered.
    parts = comm.gather((cols, local), root=0)
    if rank == 0:
        assert parts is not None
        u = np.empty((n, n + 1))
        for c, block in parts:
            u[:, c] = block
        x = np.linalg.solve(np.triu(u[:, :n]), u[:, n])  # (triangular: plain solve will do)
        elapsed = time.perf_counter() - start
        a, b = matrix(n)
        eps = np.finfo(float).eps
        norm = np.linalg.norm
        residual = norm(a @ x - b, np.inf) / (
            eps * (norm(a, np.inf) * norm(x, np.inf) + norm(b, np.inf)) * n
        )
        flops = 2 / 3 * n**3 + 3 / 2 * n**2
        assert single is not None
        verdict = "PASSED" if residual < 16 else "FAILED"
        print(f"N={n} NB={nb} ranks={size}")
        print(f"group:          {flops / elapsed / 1e9:.3f} Gflops ({elapsed:.3f} s)")
        print(f"one process:    {flops / single / 1e9:.3f} Gflops ({single:.3f} s)")
        print(f"residual check: {residual:.6f} < 16 {verdict}")
        if residual >= 16:
            sys.exit(1)


if __name__ == "__main__":
    main()
