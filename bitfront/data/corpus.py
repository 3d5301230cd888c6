"""Code text for training and calibration: Python standard-library sources, MBPP train tasks
and pocket-benchmark train tasks. It feeds the pocket pair's training and the quantization
calibration set.

Only stdlib modules (not site-packages, not tests, not data tables), MBPP train tasks 601-974
and the pocket benchmark's train split (of its default seed, the one evaluations use) are
used: never MBPP test, validation or prompt tasks, nor pocket validation or test tasks.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from bitfront.data.mbpp import MBPPTask, load_mbpp, mbpp_split, pocket_prompt
from bitfront.data.pocket_bench import pocket_split

# Top-level stdlib folders that are tests, bundled third-party code, data tables or binaries.
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "lib-dynload",
              "encodings", "pydoc_data", "ensurepip", "turtledemo", "idlelib", "lib2to3"}
_MAX_FILE_BYTES = 300_000


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    holdout: list[str]  # stdlib files kept out of training, for validation loss

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for doc in self.train + ["\0holdout\0"] + self.holdout:
            digest.update(doc.encode())
            digest.update(b"\0")
        return digest.hexdigest()[:16]


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The stdlib's own .py sources in a stable order."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith("config-") for p in parts[:-1]):
            continue
        if path.name.startswith("test_") or path.stem.endswith("_test"):
            continue
        if path.stat().st_size <= _MAX_FILE_BYTES:
            files.append(path)
    return files


def mbpp_document(task: MBPPTask) -> str:
    """An MBPP task as the pocket models see it: prompt then reference solution."""
    return pocket_prompt(task).user + task.solution


def build_corpus(*, seed: int = 0, max_stdlib_chars: int | None = None, mbpp_repeats: int = 3,
                 bench_repeats: int = 0, holdout_files: int = 20, mbpp_source=None) -> Corpus:
    """Seeded corpus: shuffled stdlib files (a few held out), repeated MBPP train tasks and
    repeated pocket-benchmark train tasks (`seed` shuffles; it never picks benchmark tasks)."""
    texts = []
    for path in stdlib_files():
        try:
            texts.append(path.read_text(encoding="utf-8").replace("\r\n", "\n"))
        except (UnicodeDecodeError, OSError):
            continue
    rng = random.Random(seed)
    rng.shuffle(texts)
    holdout, stdlib = texts[:holdout_files], texts[holdout_files:]
    if max_stdlib_chars is not None:
        kept, total = [], 0
        for text in stdlib:
            if total >= max_stdlib_chars:
                break
            kept.append(text)
            total += len(text)
        stdlib = kept
    train_tasks = mbpp_split(load_mbpp(mbpp_source), "train")
    docs = stdlib + [mbpp_document(t) for t in train_tasks] * mbpp_repeats
    if bench_repeats:
        docs += [mbpp_document(t) for t in pocket_split("train")] * bench_repeats
    rng.shuffle(docs)
    return Corpus(train=docs, holdout=holdout)
