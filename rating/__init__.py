"""Rating: rate plans, decks, prefix index, tariff arithmetic, three-leg rater. No I/O here."""
