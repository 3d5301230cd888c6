"""Shared test set-up: offline, a private cache, MBPP from shared/data when present."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MBPP = REPO.parent / "shared" / "data" / "mbpp"

# Tests never download, and never touch the user's cache. BITFRONT_TEST_CACHE lets a
# developer keep trained micro models between runs.
os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("BITFRONT_TEST_CACHE"):
    os.environ["BITFRONT_CACHE"] = os.environ["BITFRONT_TEST_CACHE"]
else:
    os.environ["BITFRONT_CACHE"] = tempfile.mkdtemp(prefix="bitfront-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BITFRONT_CACHE"], ignore_errors=True)
if SHARED_MBPP.is_dir():
    os.environ.setdefault("BITFRONT_MBPP", str(SHARED_MBPP))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def micro_training() -> subprocess.CompletedProcess:
    """`bitfront pocket train --size micro` into the test cache, run once per session as a
    user runs it (tests/test_cli.py checks what it printed)."""
    return subprocess.run([sys.executable, "-m", "bitfront.cli", "pocket", "train", "--size",
                           "micro"], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def micro_pair(micro_training) -> dict[str, Path]:
    """The micro pocket pair, trained once per session into the test cache."""
    from bitfront.pocket.store import pocket_dir

    assert micro_training.returncode == 0, micro_training.stderr

    return {name: pocket_dir(name, show_progress=False)
            for name in ("pocket-ar-micro", "pocket-diffusion-micro")}


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints of every supported format (see tiny_models.py)."""
    import tiny_models as tm

    root = tmp_path_factory.mktemp("tiny")
    dirs = {
        "coda": tm.tiny_coda(root / "coda"),
        "coda-sharded": tm.tiny_coda(root / "coda-sharded", shards=3),
        "qwen3": tm.tiny_qwen3(root / "qwen3"),
        "llama": tm.tiny_llama(root / "llama"),
    }
    dirs["qwen3-hd128"] = tm.tiny_qwen3(root / "qwen3-hd128", num_attention_heads=2,
                                        num_key_value_heads=1, head_dim=128,
                                        tokenizer=tm.small_tokenizer())
    dirs["gguf"] = tm.tiny_qwen3_gguf(dirs["qwen3-hd128"], root / "tiny-qwen3.gguf")
    return dirs
