"""The judge trusts only the task: the names the tests read come from the task's own code or
are built-ins; only the entry point (and classes the tests build arguments from) come from the
program, and an entry point is never a built-in the task does not define. Checked statically on
every task of every split of MBPP, HumanEval and the pocket benchmark, and in the sandbox with
the programs that once faked a pass through a helper name."""

from __future__ import annotations

import ast
import builtins
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bitfront.evaluators.harness import BenchTask, bench_tasks, program_for
from bitfront.evaluators.sandbox import Limits, Program, run_programs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bitfront" / "evaluators"))
import judge  # noqa: E402 - the judge is a script beside wire.py, imported as it runs

LIMITS = Limits(timeout=5.0, cpu_seconds=5)
SPLITS = {"mbpp": ("prompt", "test", "validation", "train"), "humaneval": ("test",),
          "pocket": ("test", "validation", "train")}


def every_task() -> list[BenchTask]:
    return [t for bench, splits in SPLITS.items() for split in splits
            for t in bench_tasks(bench, style="plain", split=split)]


def _defined(code: str) -> dict[str, ast.stmt]:
    return {n.name: n for n in ast.parse(code).body
            if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def hostile(task: BenchTask) -> str:
    """An answer that gets every call wrong and redefines every name the tests read but do
    not bind (helpers, modules, built-ins) as a function or class of its own."""
    free = judge._free_names(list(task.tests)) - {task.entry_point}
    lines = [f"class {name}:\n    getsizeof = staticmethod(lambda *a, **k: 0)\n\n"
             f"    def __init__(self, *a, **k):\n        pass\n" if name[0].isupper() else
             f"def {name}(*args, **kwargs):\n    return 0\n" for name in sorted(free)]
    return "\n".join([*lines, f"def {task.entry_point}(*args, **kwargs):\n    return None\n"])


def test_every_task_of_every_split_takes_only_its_entry_point_from_the_program():
    """Statically, for each of the 6274 tasks: the names the judge takes from a program that
    redefines every free name of the tests are the entry point (a function the task's own code
    defines, a built-in only where the task defines one) and the classes the task defines
    that the tests build arguments from; every other free name is a built-in or bound by the
    task's own code."""
    tasks = every_task()
    assert len(tasks) == 974 + 164 + 240 + 96 + 4800
    for task in tasks:
        program = program_for(task, hostile(task))
        task_code, taken = judge.sources(list(program.tests), program.entry_point,
                                         program.context, list(program.crosses))
        defined = _defined(task.reference)
        assert task.entry_point in defined, task.task_id
        assert isinstance(defined[task.entry_point], ast.FunctionDef), task.task_id
        assert all(isinstance(defined.get(c), ast.ClassDef) for c in program.crosses), task
        assert set(taken) <= {task.entry_point, *program.crosses}, (task.task_id, taken)
        bound = set(judge._bindings(ast.parse(task_code).body)) | set(dir(builtins))
        for name in judge._free_names(list(task.tests)) - set(taken):
            assert name in bound, (task.task_id, name)


HUMANEVAL_ATTACKS = {  # task: an answer (continuing the prompt) that passed on helper names
    "HumanEval/32": "    return 0.0\n\ndef poly(*args):\n    return 0\n",
    "HumanEval/38": "    return s\n\ndef encode_cyclic(s):\n    return s\n",
    "HumanEval/50": ("    return SEEN.get(s, '')\n\nSEEN = {}\n\ndef encode_shift(s):\n"
                     "    out = ''.join(chr((ord(c) + 5 - 97) % 26 + 97) for c in s)\n"
                     "    SEEN[out] = s\n    return out\n"),
}
MBPP_ATTACKS = {  # task id: an answer that passed through a free name of the tests
    596: ("class sys:\n    getsizeof = staticmethod(lambda *a: 0)\n\n"
          "def tuple_size(items):\n    return 0\n"),
    912: ("ANSWERS = iter([35, 5, 20])\n\ndef int(x):\n    return next(ANSWERS)\n\n"
          "def lobb_num(n, m):\n    return 0\n"),
}


def _mbpp(task_ids) -> dict[int, BenchTask]:
    tasks = [t for split in SPLITS["mbpp"] for t in bench_tasks("mbpp", style="plain",
                                                                split=split)]
    return {int(t.task_id.split("/")[1]): t for t in tasks
            if int(t.task_id.split("/")[1]) in task_ids}


def test_fake_passes_through_helper_names_and_builtin_entry_points_fail():
    """The five programs that passed through the tests' helper names (`poly`,
    `encode_cyclic`, a remembering `encode_shift`, a class `sys`, MBPP 912's `int`) fail;
    the references of those tasks, and of the tasks whose tests build arguments from the
    program's classes (`Node`, `Pair`) or call a function named like a built-in (`sum`),
    pass."""
    human = {t.task_id: t for t in bench_tasks("humaneval", style="plain")}
    mbpp = _mbpp({126, 367, 596, 601, 912, 927})
    attacks = [program_for(human[k], a) for k, a in HUMANEVAL_ATTACKS.items()]
    attacks += [program_for(mbpp[k], a) for k, a in MBPP_ATTACKS.items()]
    assert mbpp[912].entry_point == "lobb_num"
    references = [program_for(t, t.reference) for t in mbpp.values()]
    references += [program_for(human[k], human[k].reference[len(human[k].prompt.head):])
                   for k in HUMANEVAL_ATTACKS]
    outcomes = run_programs([*attacks, *references], limits=LIMITS)
    assert [o.status for o in outcomes[:len(attacks)]] == ["failed"] * len(attacks), outcomes
    assert all(o.passed for o in outcomes[len(attacks):]), outcomes[len(attacks):]


def test_an_entry_point_is_never_a_builtin_the_task_does_not_define():
    code = "def int(x):\n    return 35\n"
    tests = ("assert int(5) == 35",)
    outcomes = run_programs([Program(code, tests, entry_point="int"),
                             Program(code, tests, entry_point="int",
                                     context="def int(x):\n    return x\n")], limits=LIMITS)
    assert outcomes[0].status == "failed" and outcomes[1].passed


def _sample(tasks: list[BenchTask], every: int) -> list[BenchTask]:
    """Every task with a free name besides its entry point, and one task in `every`."""
    return [t for i, t in enumerate(tasks)
            if i % every == 0 or judge._free_names(list(t.tests)) - set(dir(builtins))
            - {t.entry_point}]


@pytest.mark.parametrize("every", [pytest.param(1, marks=pytest.mark.slow), 25])
def test_all_wrong_answers_that_redefine_every_free_name_score_zero(every):
    """Answers that redefine every free name of the tests and return wrong values pass no
    task (all of them with --runslow: every task of every split; by default every task with
    a helper name and a sample of the rest)."""
    tasks = _sample(every_task(), every)
    programs = [program_for(t, hostile(t)) for t in tasks]
    programs = [replace(p, code=p.code.replace("return None", "return 0")) if "== None" in
                "".join(t.tests) else p for p, t in zip(programs, tasks, strict=True)]
    outcomes = run_programs(programs, limits=LIMITS, workers=2)
    passed = [t.task_id for t, o in zip(tasks, outcomes, strict=True) if o.passed]
    assert passed == []
