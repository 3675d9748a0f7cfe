"""What a chain is worth: earned, spent, balance, and what is still pending.

Balance = earned - spent, where, for the chain of key K:
  earned = the amounts of K's proposals that carry the requester's agreement (the counterparty's
           half, signed by it). A proposal alone is K's claim, worth nothing: K cannot mint credit.
  spent  = the amounts of K's agreements. K's own signature is enough to count against K.
So every complete exchange moves the same amount from the requester to the worker, and the sum of
all balances is zero once each worker holds its agreements (below zero while one is in flight).
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.units import format_credits


@dataclass(frozen=True, slots=True)
class Balance:
    earned_milli: int = 0
    spent_milli: int = 0
    pending_milli: int = 0  # proposals of this key still waiting for their agreement
    exchanges: int = 0  # complete exchanges (earned or spent) in the chain
    blocks: int = 0  # blocks of this key counted

    @property
    def balance_milli(self) -> int:
        return self.earned_milli - self.spent_milli

    def __str__(self) -> str:
        return (
            f"balance {format_credits(self.balance_milli)} (earned "
            f"{format_credits(self.earned_milli)}, spent {format_credits(self.spent_milli)})"
        )
