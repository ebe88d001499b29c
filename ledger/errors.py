"""Typed ledger errors: each says what was refused and what would be accepted."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class InvalidTransaction(LedgerError, ValueError):
    """A transaction that breaks a ledger rule; nothing of it was written."""


class NotZeroSum(InvalidTransaction):
    """The postings of a transaction do not add up to exactly zero."""


class KeyConflict(LedgerError):
    """The idempotency key is already used by a transaction with different content."""

    def __init__(self, key: str, seq: int) -> None:
        super().__init__(
            f"key {key!r} already names transaction seq {seq} with different content; "
            "a retry must resend identical content, a new transaction needs a new key"
        )
        self.key = key
        self.seq = seq


class LedgerFull(LedgerError):
    """The writer's bounded queue is full: the caller must slow down or retry later."""


class LedgerClosed(LedgerError):
    """The ledger is closed (or closing) and takes no new transactions."""


class LedgerWriteFailed(LedgerError):
    """SQLite refused the group this transaction was in; nothing of the group was written."""


class SchemaError(LedgerError):
    """The file is not a ledger this code can open (newer schema, broken checkpoint, ...)."""
