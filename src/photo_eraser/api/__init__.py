"""The HTTP API: the seed contract's routes plus a few documented extensions."""
