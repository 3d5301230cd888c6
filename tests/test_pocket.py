"""The pocket pair: corpus hygiene, the tokenizer, training, and the saved layout."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from bitfront.data.corpus import build_corpus, mbpp_document, stdlib_files
from bitfront.data.mbpp import load_mbpp, mbpp_split, pocket_prompt
from bitfront.data.pocket_bench import pocket_split
from bitfront.models import load_local
from bitfront.models.causal import CausalLM
from bitfront.models.diffusion import DiffusionLM
from bitfront.pocket.train import SIZES, Phase, diffusion_from_ar, init_ar


def test_corpus_is_stdlib_and_train_tasks_only():
    files = stdlib_files()
    assert files and all("site-packages" not in f.parts for f in files)
    assert not [f for f in files if f.name.startswith("test_") or "test" in f.parts]
    micro = SIZES["micro"]
    assert micro.bench_repeats >= 1
    settings = {"max_stdlib_chars": micro.max_stdlib_chars, "mbpp_repeats": micro.mbpp_repeats,
                "bench_repeats": micro.bench_repeats}
    corpus = build_corpus(**settings)
    text = "\n".join(corpus.train)
    tasks = load_mbpp()
    for task in mbpp_split(tasks, "train")[:20]:
        assert task.solution in text
    for split in ("test", "validation", "prompt"):
        leaked = [t.task_id for t in mbpp_split(tasks, split) if pocket_prompt(t).user in text]
        assert not leaked, f"MBPP {split} tasks in the corpus: {leaked[:5]}"
    documents = set(corpus.train)
    assert all(mbpp_document(t) in documents for t in pocket_split("train"))
    for split in ("validation", "test"):
        for task in pocket_split(split):
            for part in (pocket_prompt(task).user, task.text, task.solution):
                assert part not in text, f"pocket {split} task {task.task_id} leaked: {part!r}"
    assert build_corpus(**settings).fingerprint() == corpus.fingerprint()


def test_saved_pair_is_standard_hf_layout(micro_pair):
    for name, directory in micro_pair.items():
        for file in ("config.json", "model.safetensors", "tokenizer.json", "training.json"):
            assert (directory / file).exists(), (name, file)
        record = json.loads((directory / "training.json").read_text())
        assert record["corpus"]["fingerprint"] and record["tokens_seen"] > 0
        objectives = [phase["objective"] for phase in record["phases"]]
        assert objectives == (["next-token"] if "-ar-" in name
                              else ["next-token", "masked-diffusion"])
        assert record["tokens_seen"] == sum(phase["tokens"] for phase in record["phases"])
    ar = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    dm = load_local(micro_pair["pocket-diffusion-micro"], device="cpu")
    assert isinstance(ar, CausalLM) and isinstance(dm, DiffusionLM)
    assert json.loads((micro_pair["pocket-ar-micro"] / "config.json").read_text())[
        "model_type"] == "qwen3"
    assert sum(p.numel() for p in ar.module.parameters()) == sum(
        p.numel() for p in dm.module.parameters())
    assert dm.tokens.mask == dm.tokenizer.convert_tokens_to_ids("<|mask|>")
    assert not ar.use_chat and not dm.use_chat


def test_each_phase_improves_on_its_starting_point(micro_pair):
    tasks = mbpp_split(load_mbpp(), "test")[:30]
    prompts, targets = [pocket_prompt(t) for t in tasks], [t.solution for t in tasks]
    ar = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    dm = load_local(micro_pair["pocket-diffusion-micro"], device="cpu")
    # The exact weights each phase started from: the seeded random AR initialisation, and
    # the trained AR weights in the diffusion network.
    starts = {ar: CausalLM("start", init_ar(SIZES["micro"].backbone(ar.tokenizer), seed=0),
                           ar.tokenizer),
              dm: DiffusionLM("start", diffusion_from_ar(ar.module), dm.tokenizer, dm.tokens)}
    for trained, start in starts.items():
        good, bad = trained.score(prompts, targets), start.score(prompts, targets)
        for result in (good, bad):
            assert all(0.0 <= a <= 1.0 for a in result.accuracy)
        assert good.mean_accuracy > bad.mean_accuracy + 0.02, trained.name
        assert good.mean_logprob > bad.mean_logprob, trained.name


def test_diffusion_twin_starts_from_the_trained_ar_weights(micro_pair, tmp_path):
    from dataclasses import replace

    from bitfront.pocket.train import train_pair

    ar = load_local(micro_pair["pocket-ar-micro"], device="cpu").module
    copied = diffusion_from_ar(ar).state_dict()
    assert copied.keys() == ar.state_dict().keys()
    for key, tensor in ar.state_dict().items():
        assert torch.equal(copied[key], tensor) and copied[key].data_ptr() != tensor.data_ptr()
    # Through the whole pipeline: with no diffusion steps the twin holds the AR weights.
    size = replace(SIZES["micro"], name="tiny", ar=Phase(steps=4, lr=3e-3, warmup=1),
                   diffusion=Phase(steps=0, lr=3e-3, warmup=1), eval_tasks=2,
                   max_stdlib_chars=50_000)
    paths = train_pair(size, tmp_path, show_progress=False)
    ar_state, dm_state = (load_file(paths[name] / "model.safetensors") for name in size.names())
    assert ar_state.keys() == dm_state.keys()
    assert all(torch.equal(ar_state[key], dm_state[key]) for key in ar_state)


def test_prefix_curriculum_masks_only_after_each_rows_cut(micro_pair):
    from bitfront.models.diffusion import seeded_generator
    from bitfront.pocket.train import _unmaskable_prefixes

    assert _unmaskable_prefixes(torch.Size((4, 8)), 0.0, seeded_generator(0)) is None
    maskable = _unmaskable_prefixes(torch.Size((400, 32)), 0.5, seeded_generator(0))
    cuts = (~maskable).sum(dim=1)
    assert (maskable == (torch.arange(32)[None, :] >= cuts[:, None])).all()  # a prefix each
    assert 0.4 < (cuts > 0).float().mean() < 0.6 and cuts.max() < 32
    dm = load_local(micro_pair["pocket-diffusion-micro"], device="cpu")
    ids = torch.randint(0, 100, (400, 32))
    noisy, masked, _ = dm.noisy_batch(ids, seeded_generator(1), maskable)
    assert not masked[~maskable].any() and masked.any()
    assert torch.equal(noisy[~masked], ids[~masked])
    assert (noisy[masked] == dm.tokens.mask).all()


def test_default_pair_ships_with_its_training_record():
    from dataclasses import asdict

    from bitfront.pocket.store import pocket_dir, shipped_dir

    for name in SIZES["default"].names():
        directory = pocket_dir(name)  # the test cache is empty: the shipped copy is used
        assert directory == shipped_dir(name)
        record = json.loads((directory / "training.json").read_text())
        assert record["size"] == asdict(SIZES["default"]), "recipe changed: retrain and ship"
        assert record["metrics"]["mbpp_test_tasks"] == 500
    ar, dm = (json.loads((shipped_dir(name) / "training.json").read_text())
              for name in SIZES["default"].names())
    assert ar["metrics"]["mbpp_test_top1"] >= 0.25
    assert dm["phases"][0] == ar["phases"][0]  # the diffusion twin continues the AR run


def test_training_is_deterministic(tmp_path):
    from dataclasses import replace

    from bitfront.pocket.train import train_pair

    size = replace(SIZES["micro"], name="tiny", ar=Phase(steps=8, lr=3e-3, warmup=2),
                   diffusion=Phase(steps=8, lr=3e-3, warmup=2), eval_tasks=4,
                   max_stdlib_chars=100_000)
    a = train_pair(size, tmp_path / "a", show_progress=False)
    b = train_pair(size, tmp_path / "b", show_progress=False)
    for name in a:
        assert (a[name] / "model.safetensors").read_bytes() == (
            b[name] / "model.safetensors").read_bytes()
