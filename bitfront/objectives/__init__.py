"""Scoring a candidate plan: accuracy proxy, latency, memory, HAWQ sensitivity."""
