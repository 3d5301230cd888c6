"""Prompt formats for code benchmarks."""

from __future__ import annotations

from bitfront.evaluators.mbpp import MBPPTask
from bitfront.models.base import Prompt


def pocket_prompt(task: MBPPTask) -> Prompt:
    """Plain completion for pocket models: the task and its tests as a module docstring.

    The pocket corpus renders MBPP train tasks the same way, followed by their solution.
    """
    tests = "\n".join(task.test_list)
    return Prompt(f'"""{task.text.strip()}\n{tests}\n"""\n')
