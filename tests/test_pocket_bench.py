"""The pocket benchmark: deterministic, disjoint splits of learnable tasks whose references
pass their own tests in the sandbox."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bitfront.data.corpus import mbpp_document
from bitfront.data.mbpp import pocket_prompt
from bitfront.data.pocket_bench import (
    ASSERTS,
    FAMILIES,
    MAX_ASSERT_CHARS,
    SPLIT_SIZES,
    TASK_ID_BASE,
    pocket_split,
)
from bitfront.errors import DataError
from bitfront.evaluators.harness import BENCHES, bench_tasks, program_for
from bitfront.evaluators.sandbox import run_programs

SLOT = r"(?:\w+|-\d+|'[^']*')"  # what fills a template slot: a name, an int or a string


@pytest.fixture(scope="module")
def splits():
    return {split: pocket_split(split) for split in SPLIT_SIZES}


def test_sizes_ids_and_task_shape(splits):
    assert len(FAMILIES) >= 40
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    assert SPLIT_SIZES["test"] >= 200
    ids = set()
    for split, tasks in splits.items():
        assert len(tasks) == SPLIT_SIZES[split]
        assert [t.task_id for t in tasks] == [TASK_ID_BASE[split] + i + 1
                                               for i in range(len(tasks))]
        ids |= {t.task_id for t in tasks}
        for task in tasks:
            assert len(task.test_list) >= ASSERTS >= 3
            assert all(t.startswith("assert ") and len(t) <= MAX_ASSERT_CHARS
                       for t in task.test_list)
            assert len({t.split(" == ")[-1] for t in task.test_list}) > 1  # outputs vary
            assert task.text.startswith(("Write", "Create", "Implement", "Define"))
            assert task.text.endswith(".") and "\n" not in task.text
            assert 2 <= len(task.code.splitlines()) <= 7
    assert len(ids) == sum(SPLIT_SIZES.values())  # no id shared between splits


def test_every_family_in_every_split(splits):
    """Families take turns, and each task's code is its family's template filled in."""
    for tasks in splits.values():
        assert len(tasks) >= len(FAMILIES)
        for i, task in enumerate(tasks):
            family = FAMILIES[i % len(FAMILIES)]
            pattern = re.sub(r"\\\$\w+", lambda _: SLOT, re.escape(family.code))
            assert re.fullmatch(pattern, task.code), (family.name, task.code)


def test_same_seed_same_tasks_in_another_process(splits):
    assert pocket_split("test") == splits["test"]
    code = ("from bitfront.data.pocket_bench import pocket_split\n"
            "print(repr([(t.task_id, t.text, t.code, t.test_list) for t in "
            "pocket_split('validation')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"}).stdout
    assert out.strip() == repr([(t.task_id, t.text, t.code, t.test_list)
                                for t in splits["validation"]])
    other = pocket_split("test", seed=1)
    assert [t.code for t in other] != [t.code for t in splits["test"]]
    assert [t.test_list for t in other] != [t.test_list for t in splits["test"]]


def test_held_out_splits_are_disjoint_from_train(splits):
    def text(t):
        return " ".join(t.text.lower().split()).rstrip(".")

    train_texts = {text(t) for t in splits["train"]}
    train_codes = {t.code.strip() for t in splits["train"]}
    held_out = splits["validation"] + splits["test"]
    assert not {text(t) for t in held_out} & train_texts
    assert not {t.code.strip() for t in held_out} & train_codes
    assert len({text(t) for t in held_out}) == len(held_out)
    assert len({t.code.strip() for t in held_out}) == len(held_out)


def test_unknown_split_is_a_data_error():
    with pytest.raises(DataError, match="unknown pocket split 'prompt'"):
        pocket_split("prompt")


def test_prompts_and_corpus_documents(splits):
    task = splits["train"][0]
    prompt = pocket_prompt(task).user
    assert prompt.startswith(f'"""{task.text}\n') and prompt.endswith('"""\n')
    assert all(t in prompt for t in task.test_list)
    assert mbpp_document(task) == prompt + task.solution
    assert "pocket" in BENCHES
    few = bench_tasks("pocket", style="fewshot", limit=2)
    assert few[0].prompt.prompt.user.count("[BEGIN]") == 4


def test_every_held_out_reference_passes_and_a_wrong_one_fails():
    """The harness check: every validation and test reference passes its own asserts in the
    sandbox, answered as a pocket model would complete the plain prompt; a solution off by
    one fails."""
    tasks = (bench_tasks("pocket", style="plain", split="validation")
             + bench_tasks("pocket", style="plain"))
    assert len(tasks) == SPLIT_SIZES["validation"] + SPLIT_SIZES["test"]
    assert tasks[0].task_id == f"pocket/{TASK_ID_BASE['validation'] + 1}"
    answers = [t.reference + '\n"""Trailing text after the stop."""\n' for t in tasks]
    wrong = tasks[0].reference.replace("return ", "return 1 + ")
    programs = [program_for(t, a) for t, a in zip(tasks, answers, strict=True)]
    outcomes = run_programs([*programs, program_for(tasks[0], wrong)], workers=2)
    failures = [(t.task_id, o.status, o.detail)
                for t, o in zip(tasks, outcomes, strict=False) if not o.passed]
    assert failures == []
    assert outcomes[-1].status == "failed"
