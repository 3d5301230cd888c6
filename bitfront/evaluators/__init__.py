"""Benchmarks: MBPP/HumanEval data, prompts, sandboxed execution, pass@k, proxy sets."""
