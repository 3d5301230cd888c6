"""Prompt formats for the code benchmarks and how code is cut out of an answer.

- `instruct`: the prompts of CoDA's evaluation harness (lm-evaluation-harness style) for chat
  models: a user turn and an assistant prefix that opens a ```python block;
- `fewshot`: the classic 3-shot MBPP format ([BEGIN] ... [DONE], shots from tasks 2, 3, 4)
  for base models;
- `plain`: plain completion for pocket models (the task and its tests in a module docstring;
  the pocket corpus renders MBPP train tasks the same way).
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass

from bitfront.data.humaneval import HumanEvalTask
from bitfront.data.mbpp import MBPPTask, pocket_prompt
from bitfront.errors import BitfrontError
from bitfront.models.base import Prompt

STYLES = ("instruct", "fewshot", "plain")
FEWSHOT_TASK_IDS = (2, 3, 4)
CODE_PREFIX = "Here is the completed function:\n```python\n"
PLAIN_STOPS = ('\n"""', "\nassert ", "\nif __name__", "\nprint(", "\n\n\n")
INSTRUCT_STOPS = ("```",)
FEWSHOT_STOPS = ("[DONE]",)


@dataclass(frozen=True)
class CodePrompt:
    """A benchmark prompt: what the model sees, where its answer stops, and how the answer
    becomes a program (`head` is prepended, e.g. HumanEval's signature)."""

    prompt: Prompt
    stop: tuple[str, ...]
    head: str = ""


def _mbpp_question(task: MBPPTask) -> str:
    return (f"You are an expert Python programmer, and here is your task: {task.text} "
            f"Your code should pass these tests:\n\n" + "\n".join(task.test_list[:3]))


def mbpp_prompt(task: MBPPTask, style: str, shots: list[MBPPTask] | None = None) -> CodePrompt:
    if style == "instruct":
        return CodePrompt(Prompt(_mbpp_question(task), CODE_PREFIX), INSTRUCT_STOPS)
    if style == "fewshot":
        if not shots:
            raise BitfrontError("the few-shot MBPP format needs the shot tasks 2, 3, 4")
        examples = [f"{_mbpp_question(s)}\n[BEGIN]\n{s.solution.rstrip()}\n[DONE]" for s in shots]
        text = "\n\n".join([*examples, f"{_mbpp_question(task)}\n[BEGIN]\n"])
        return CodePrompt(Prompt(text), FEWSHOT_STOPS)
    if style == "plain":
        return CodePrompt(pocket_prompt(task), PLAIN_STOPS)
    raise BitfrontError(f"unknown prompt style {style!r}; choose from {STYLES}")


def humaneval_prompt(task: HumanEvalTask, style: str) -> CodePrompt:
    """HumanEval: the answer continues the given signature; the program is prompt + answer."""
    if style == "instruct":
        user = ("Write a solution to the following problem and make sure that it passes the "
                f"tests:\n```{task.prompt}")
        return CodePrompt(Prompt(user, f"{CODE_PREFIX}{task.prompt}\n"), INSTRUCT_STOPS,
                          head=task.prompt + "\n")
    if style in ("plain", "fewshot"):
        return CodePrompt(Prompt(task.prompt), PLAIN_STOPS, head=task.prompt)
    raise BitfrontError(f"unknown prompt style {style!r}; choose from {STYLES}")


def default_style(lm) -> str:
    """Chat models get the instruct format, the rest plain completion."""
    return "instruct" if lm.use_chat else "plain"


def names_used(code: str) -> set[str]:
    """Every name a piece of code (e.g. the tests) refers to."""
    try:
        tree = _parse(code)
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def sanitize(code: str, entry_point: str | None, also: set[str] = frozenset()) -> str:
    """Keep the imports and the definitions the entry point depends on (AST-based).

    Top-level statements that are not imports, definitions or simple assignments (test
    calls, prints, asserts) are dropped; of the definitions, those reachable from
    `entry_point` (and from the names in `also`, e.g. those the tests use) through names they
    use are kept. Code that does not parse is cut at the longest prefix of whole lines that
    does; an unknown or missing entry point keeps every definition. Code nested too deeply
    for the ast module is returned as it is (running it reports the problem).
    """
    try:
        return _sanitize(code, entry_point, also)
    except (RecursionError, MemoryError):
        return code


def _sanitize(code: str, entry_point: str | None, also: set[str]) -> str:
    tree = _parse_prefix(code)
    if tree is None:
        return code
    defs: dict[str, ast.stmt] = {}
    kept: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            kept.append(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defs[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defs[target.id] = node
    if entry_point is None or entry_point not in defs:
        wanted = set(defs)
    else:
        wanted = {entry_point} | (set(also) & set(defs))
    stack = list(wanted)
    while stack:
        for sub in ast.walk(defs[stack.pop()]):
            if isinstance(sub, ast.Name) and sub.id in defs and sub.id not in wanted:
                wanted.add(sub.id)
                stack.append(sub.id)
    body = [n for n in tree.body if n in kept or any(n is defs[w] for w in wanted)]
    return ast.unparse(ast.Module(body=body, type_ignores=[])) + "\n"


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # generated code often has invalid escape sequences
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def _parse_prefix(code: str) -> ast.Module | None:
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        try:
            return _parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
    return None
