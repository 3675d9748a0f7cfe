"""Credit: each node's hash-chained record of work done, signed by both parties (TrustChain-like).

1 credit = 1 CPU-second of guest work (ledger.units). A worker's proposal half-block and the
requester's agreement half-block make one exchange (ledger.block, ledger.exchange); each node keeps
its own chain of half-blocks plus the counterparty halves, in SQLite in its home (ledger.store).
Validation, balances, fork proofs and admission are pure functions (ledger.validate,
ledger.balance, ledger.fork, ledger.admission); ledger.service.Ledger is what the node calls, and
ledger.messages what it sends. Errors say whose fault they are (ledger.errors).

Nothing in this package imports libp2p or trio, so `rain credit` starts fast.
"""
