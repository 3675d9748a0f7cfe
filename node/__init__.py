"""The peer process and its user interfaces: rain-node (the node), rain (the CLI), the node's home,
scheduling, idle policy, MPI groups and the panel."""
