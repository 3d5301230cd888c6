"""Benchmark and corpus data: MBPP, HumanEval, the code corpus of the pocket pair."""
