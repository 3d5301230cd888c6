"""The pocket pair: corpus hygiene, the tokenizer, training, and the saved layout."""

from __future__ import annotations

import json

from bitfront.data.corpus import build_corpus, stdlib_files
from bitfront.data.mbpp import load_mbpp, mbpp_split
from bitfront.evaluators.prompts import pocket_prompt
from bitfront.models import load_local
from bitfront.models.causal import CausalLM
from bitfront.models.diffusion import DiffusionLM
from bitfront.pocket.train import SIZES, _init_pair


def test_corpus_is_stdlib_and_mbpp_train_only():
    files = stdlib_files()
    assert files and all("site-packages" not in f.parts for f in files)
    assert not [f for f in files if f.name.startswith("test_") or "test" in f.parts]
    corpus = build_corpus(max_stdlib_chars=50_000)
    text = "\n".join(corpus.train)
    tasks = load_mbpp()
    for task in mbpp_split(tasks, "train")[:20]:
        assert task.solution in text
    for split in ("test", "validation", "prompt"):
        leaked = [t.task_id for t in mbpp_split(tasks, split) if pocket_prompt(t).user in text]
        assert not leaked, f"{split} tasks in the corpus: {leaked[:5]}"
    assert build_corpus(max_stdlib_chars=50_000).fingerprint() == corpus.fingerprint()


def test_saved_pair_is_standard_hf_layout(micro_pair):
    for name, directory in micro_pair.items():
        for file in ("config.json", "model.safetensors", "tokenizer.json", "training.json"):
            assert (directory / file).exists(), (name, file)
        record = json.loads((directory / "training.json").read_text())
        assert record["corpus"]["fingerprint"] and record["tokens_seen"] > 0
    ar = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    dm = load_local(micro_pair["pocket-diffusion-micro"], device="cpu")
    assert isinstance(ar, CausalLM) and isinstance(dm, DiffusionLM)
    assert json.loads((micro_pair["pocket-ar-micro"] / "config.json").read_text())[
        "model_type"] == "qwen3"
    assert sum(p.numel() for p in ar.module.parameters()) == sum(
        p.numel() for p in dm.module.parameters())
    assert dm.tokens.mask == dm.tokenizer.convert_tokens_to_ids("<|mask|>")
    assert not ar.use_chat and not dm.use_chat


def test_trained_micro_models_beat_untrained_ones(micro_pair):
    tasks = mbpp_split(load_mbpp(), "test")[:30]
    prompts, targets = [pocket_prompt(t) for t in tasks], [t.solution for t in tasks]
    for name, directory in micro_pair.items():
        trained = load_local(directory, device="cpu")
        # The exact weights training started from (same seed, same backbone).
        ar, dm = _init_pair(SIZES["micro"].backbone(trained.tokenizer), seed=0)
        untrained = (CausalLM(name, ar, trained.tokenizer) if trained.family == "ar"
                     else DiffusionLM(name, dm, trained.tokenizer, trained.tokens))
        good, bad = trained.score(prompts, targets), untrained.score(prompts, targets)
        for result in (good, bad):
            assert all(0.0 <= a <= 1.0 for a in result.accuracy)
        assert good.mean_accuracy > bad.mean_accuracy + 0.02, name
        assert good.mean_logprob > bad.mean_logprob, name


def test_default_pair_ships_with_its_training_record():
    from dataclasses import asdict

    from bitfront.pocket.store import pocket_dir, shipped_dir

    for name in SIZES["default"].names():
        directory = pocket_dir(name)  # the test cache is empty: the shipped copy is used
        assert directory == shipped_dir(name)
        record = json.loads((directory / "training.json").read_text())
        assert record["size"] == asdict(SIZES["default"]), "recipe changed: retrain and ship"
        assert record["metrics"]["mbpp_test_tasks"] == 500
    ar = json.loads((shipped_dir("pocket-ar") / "training.json").read_text())
    assert ar["metrics"]["mbpp_test_top1"] >= 0.25


def test_training_is_deterministic(tmp_path):
    from dataclasses import replace

    from bitfront.pocket.train import train_pair

    size = replace(SIZES["micro"], name="tiny", steps=8, warmup=2, eval_tasks=4,
                   max_stdlib_chars=100_000)
    a = train_pair(size, tmp_path / "a", show_progress=False)
    b = train_pair(size, tmp_path / "b", show_progress=False)
    for name in a:
        assert (a[name] / "model.safetensors").read_bytes() == (
            b[name] / "model.safetensors").read_bytes()
