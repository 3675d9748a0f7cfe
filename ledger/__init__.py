"""Credit: each node's hash-chained ledger of half-blocks signed by both parties (TrustChain-style)."""
