"""Judging models: validate (parity and accuracy), benchmark (latency), tune (the fastest candidate that passes)."""
