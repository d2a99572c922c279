"""Token-index parity: a seeded corpus, backends, and the report ALGORITHM.md defines."""
