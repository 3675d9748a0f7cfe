"""The peer process and its user interfaces, by capability:

- `daemon`: rain-node's wiring (`main`: its command line); `snapshot`: one picture of the node;
- `jobs`: jobs across the network (`core`: the shared sans-io rules; `requester`; `worker`);
- `owner`: owner first (the lending policy, its signals, its config);
- `control`: the control API (the user-only socket, the operations behind it);
- `cli`: `rain`, one module per command group;
- `ledger_link`: the node's one door to its ledger; `faults`: whose fault an error is;
- `testing`: a kit for testing the trio code in memory;
- `mpi`, `panel`: the rooms of ad-hoc MPI groups and the local panel.
The layer rule (who may import whom) is written and enforced in tests/test_layers.py.
"""
