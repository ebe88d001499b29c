"""Append-only, hash-chained, exactly-once ledger on SQLite; balances; verification; reports."""
