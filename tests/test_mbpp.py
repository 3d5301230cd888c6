"""MBPP data: sources, splits and clear errors for malformed files."""

from __future__ import annotations

import hashlib
import json

import pytest

from bitfront.data.mbpp import SPLITS, load_mbpp, mbpp_split, resolve_source
from bitfront.errors import DataError

SHA256 = {"mbpp.jsonl": "143559fa164408d45cab058238471288b0e447507ce55db3057c56113d9dccb4",
          "sanitized-mbpp.json":
          "8ac32b2799150228e2d745aed09c870b7e4444246d4727d1004576207ef40769"}


def test_vendored_copy_is_the_original(monkeypatch):
    monkeypatch.delenv("BITFRONT_MBPP", raising=False)
    for name, digest in SHA256.items():
        path = resolve_source(None, name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_standard_splits():
    tasks = load_mbpp()
    assert len(tasks) == 974
    sizes = {split: len(mbpp_split(tasks, split)) for split in SPLITS}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    assert len(load_mbpp(sanitized=True)) == 427
    with pytest.raises(DataError, match="unknown MBPP split"):
        mbpp_split(tasks, "dev")


def test_malformed_files_name_file_and_line(tmp_path):
    good = json.dumps({"task_id": 1, "text": "t", "code": "c", "test_list": []})
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text(good + "\n" + good + "\n{not json\n")
    with pytest.raises(DataError, match=r"mbpp.jsonl, line 3: not valid JSON"):
        load_mbpp(bad)
    bad.write_text(good + "\n" + json.dumps({"task_id": 2, "text": "t"}) + "\n")
    with pytest.raises(DataError, match=r"mbpp.jsonl, line 2: malformed MBPP record"):
        load_mbpp(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_mbpp(tmp_path / "missing.jsonl")
