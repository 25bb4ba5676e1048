"""The functional core: pure functions from observed state to actions. No I/O here."""
