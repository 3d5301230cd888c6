"""MBPP data: the full set (974 tasks, standard splits) and the sanitized set (427 tasks).

Sources, in order: an explicit path (a file, or a directory holding `mbpp.jsonl` /
`sanitized-mbpp.json`), the `BITFRONT_MBPP` environment variable (same forms), the string
"hub" (Hugging Face `google-research-datasets/mbpp` through `datasets`), and otherwise the copy
vendored in this package (CC-BY-4.0, identical bytes; see data/mbpp/README.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bitfront.errors import DataError
from bitfront.models.base import Prompt

SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}
FULL_FILE, SANITIZED_FILE = "mbpp.jsonl", "sanitized-mbpp.json"
HUB_ID = "google-research-datasets/mbpp"


@dataclass(frozen=True)
class MBPPTask:
    task_id: int
    text: str
    code: str
    test_list: tuple[str, ...]
    test_setup_code: str = ""
    test_imports: tuple[str, ...] = ()

    @property
    def solution(self) -> str:
        """The reference code with Unix line endings."""
        return self.code.replace("\r\n", "\n").rstrip() + "\n"


def _vendored(filename: str) -> Path:
    return Path(str(resources.files("bitfront.data") / "vendored" / "mbpp" / filename))


def resolve_source(source: str | Path | None, filename: str) -> Path | str:
    """The file to read (or "hub") for `source`, following the order in the module doc."""
    chosen = source if source is not None else os.environ.get("BITFRONT_MBPP")
    if chosen is None:
        return _vendored(filename)
    if str(chosen) == "hub":
        return "hub"
    path = Path(chosen).expanduser()
    if path.is_dir():
        path = path / filename
    if not path.exists():
        raise DataError(f"MBPP file not found: {path} (set --mbpp or BITFRONT_MBPP to a "
                        f"directory holding {filename}, or to the file itself)")
    return path


def _task(record: dict, where: str) -> MBPPTask:
    try:
        return MBPPTask(
            task_id=int(record["task_id"]),
            text=record.get("text") or record["prompt"],
            code=record["code"],
            test_list=tuple(record["test_list"]),
            test_setup_code=record.get("test_setup_code") or "",
            test_imports=tuple(record.get("test_imports") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: malformed MBPP record ({type(exc).__name__}: {exc})") from exc


def _read_jsonl(path: Path) -> list[MBPPTask]:
    tasks = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
            tasks.append(_task(record, f"{path}, line {lineno}"))
    return tasks


def _read_json(path: Path) -> list[MBPPTask]:
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of tasks")
    return [_task(r, f"{path}, task #{i}") for i, r in enumerate(records)]


def _read_hub(sanitized: bool) -> list[MBPPTask]:
    try:
        from datasets import concatenate_datasets, load_dataset

        parts = load_dataset(HUB_ID, "sanitized" if sanitized else "full")
        rows = concatenate_datasets(list(parts.values()))
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same to the user
        raise DataError(f"could not load {HUB_ID} from the hub ({exc}); pass a local "
                        "mbpp.jsonl with --mbpp or BITFRONT_MBPP") from exc
    return sorted((_task(dict(r), HUB_ID) for r in rows), key=lambda t: t.task_id)


def load_mbpp(source: str | Path | None = None, *, sanitized: bool = False) -> list[MBPPTask]:
    """All tasks of the full (default) or sanitized MBPP set, sorted by task id."""
    where = resolve_source(source, SANITIZED_FILE if sanitized else FULL_FILE)
    if where == "hub":
        return _read_hub(sanitized)
    tasks = _read_json(where) if where.suffix == ".json" else _read_jsonl(where)
    if not tasks:
        raise DataError(f"{where}: no MBPP tasks")
    return sorted(tasks, key=lambda t: t.task_id)


def mbpp_split(tasks: list[MBPPTask], split: str) -> list[MBPPTask]:
    """The tasks of a standard split: prompt, test, validation or train."""
    if split not in SPLITS:
        raise DataError(f"unknown MBPP split {split!r}; choose from {sorted(SPLITS)}")
    lo, hi = SPLITS[split]
    return [t for t in tasks if lo <= t.task_id <= hi]


def pocket_prompt(task: MBPPTask) -> Prompt:
    """Plain completion for pocket models: the task and its tests as a module docstring (how
    the pocket corpus renders training tasks, and the `plain` prompt style)."""
    tests = "\n".join(task.test_list)
    return Prompt(f'"""{task.text.strip()}\n{tests}\n"""\n')
