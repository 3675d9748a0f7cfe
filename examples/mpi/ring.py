"""A ring: a token goes once round every rank, each adding its rank; then an allreduce.

rain mpi run -n 4 -l --input examples/mpi/ring.py -- python3 ring.py
"""

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
if rank == 0:
    comm.send(0, dest=1 % size)
    token = comm.recv(source=size - 1)
    print(f"the token came back as {token} (expected {sum(range(size))})")
else:
    token = comm.recv(source=rank - 1)
    comm.send(token + rank, dest=(rank + 1) % size)
total = comm.allreduce(rank + 1)
print(f"rank {rank} of {size} on {MPI.Get_processor_name()}: allreduce {total}")
