"""The control API: how the local user (the `rain` CLI, and the panel) talks to its own node.

- `channel`: JSON lines over a user-only Unix socket in the node's home; the client half is
  plain blocking code (no trio, no libp2p) so a CLI command costs only Python's start-up.
- `ops`: the node's operations behind it (status, peers, policy, chains, workers), read from
  one snapshot of the node (node.snapshot).
- `jobs`: the job operations (submit, follow, list, cancel), over the requester.
Nothing here is reachable from the network.
"""
