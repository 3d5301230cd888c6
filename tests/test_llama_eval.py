"""`bitfront eval MODEL.gguf --runtime llama.cpp`: the harness's prompts, stops and sandbox,
with the answers written by llama.cpp from a GGUF that bitfront exported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import bitfront
from bitfront.cli import main
from bitfront.errors import BitfrontError
from bitfront.evaluators.harness import EvalConfig, bench_tasks, evaluate
from bitfront.models import load_local
from bitfront.models.base import cut_at_stops
from bitfront.runtimes.llama_cpp import llama_cpp_installed
from bitfront.space.layers import layer_space
from bitfront.space.plan import BitPlan

needs_llama = pytest.mark.skipif(not llama_cpp_installed(),
                                 reason="needs llama-cpp-python (the bitfront[llama] extra)")


def f16_gguf(lm, path: Path) -> Path:
    """`lm` exported by `--format gguf` with a plan of 16 bits everywhere."""
    from bitfront.exports.gguf import export_gguf

    plan = BitPlan.uniform(layer_space(lm), lm.fingerprint(), 16)
    return export_gguf(lm, plan, path, importance=False).path


@pytest.fixture(scope="module")
def micro(micro_pair, tmp_path_factory):
    """pocket-ar-micro in torch (float32) and its 16-bit GGUF."""
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu", dtype=torch.float32)
    return lm, f16_gguf(lm, tmp_path_factory.mktemp("gguf") / "micro-f16.gguf")


@needs_llama
def test_llama_cpp_writes_the_answers_torch_writes_from_a_16bit_gguf(micro):
    """Same prompt tokens (llama.cpp's tokenizer from the file), and greedy answers equal to
    bitfront's float32 model on at least 36 of 40 pocket tasks. Measured: 40 of 40, at 64 and
    at 128 new tokens, on 1 and 2 threads. The GGUF holds f16 weights and llama.cpp rounds
    activations to f16 for its products (logits about 1e-3 from torch's), so only a near tie
    flips a greedy token: the margin allows a few on other CPUs or llama.cpp versions."""
    from bitfront.runtimes.llama_lm import LlamaLM

    lm, path = micro
    llama = LlamaLM(path, threads=1)
    tasks = bench_tasks("pocket", style="plain", limit=40)
    prompts, stops = [t.prompt.prompt for t in tasks], tasks[0].prompt.stop
    assert not llama.use_chat and not lm.use_chat
    assert [llama.encode(llama.render(p)) for p in prompts] == [
        lm.encode(lm.render(p)) for p in prompts]
    answers = llama.generate(prompts, max_new_tokens=64, stop=stops)
    # Torch's stop-string criterion also matches a stop that begins in the prompt (an answer
    # opening with "assert " after the prompt's last newline ends there); the harness cuts
    # the answer alone, as llama.cpp does: compare with torch's uncut answers, cut alike.
    reference = [cut_at_stops(a, stops)
                 for a in lm.generate(prompts, max_new_tokens=64, batch_size=len(prompts))]
    assert sum(a == b for a, b in zip(answers, reference, strict=True)) >= 36


@needs_llama
def test_sampled_answers_follow_the_seed_and_differ_between_samples(micro):
    from bitfront.runtimes.llama_lm import LlamaLM

    llama = LlamaLM(micro[1], threads=1)
    prompt = bench_tasks("pocket", style="plain", limit=1)[0].prompt.prompt
    sample = dict(temperature=1.0, top_p=0.95, max_new_tokens=24)
    first = llama.generate([prompt] * 4, seed=5, **sample)
    assert llama.generate([prompt] * 4, seed=5, **sample) == first
    assert len(set(first)) > 1 and llama.generate([prompt] * 4, seed=6, **sample) != first


@needs_llama
def test_pass_at_1_through_the_sandbox_as_in_torch(tmp_path):
    """pocket-ar (the shipped, trained model) as a 16-bit GGUF through the harness: the
    sandbox passes and fails the same tasks as for the torch model (measured: 40 of the
    first 40 pocket tasks answered alike, pass@1 72.5% in both runtimes)."""
    from bitfront.runtimes.llama_lm import LlamaLM

    lm = bitfront.load_model("pocket-ar", device="cpu", dtype="float32", show_progress=False)
    config = EvalConfig(bench="pocket", limit=8, max_new_tokens=128)
    llama = LlamaLM(f16_gguf(lm, tmp_path / "pocket-ar-f16.gguf"), threads=1)
    ours = evaluate(llama, config, tmp_path / "llama.json", show_progress=False)
    theirs = evaluate(lm, config, tmp_path / "torch.json", show_progress=False)
    assert ours["model"] == "pocket-ar-f16.gguf (llama.cpp)" and ours["tasks"] == 8
    assert {s["status"] for r in ours["results"] for s in r["samples"]} <= {"passed", "failed"}
    assert 0 < ours["pass@1"] < 1 and ours["pass@1"] == theirs["pass@1"]
    assert [(r["task_id"], r["passed"]) for r in ours["results"]] == [
        (r["task_id"], r["passed"]) for r in theirs["results"]]


def one_line_error(status: int, capsys, expect: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and expect in lines[0], lines[0]


@needs_llama
def test_cli_eval_with_llama_cpp_writes_its_own_results(micro, tmp_path, capsys, monkeypatch):
    _, path = micro
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(path), "--runtime", "llama.cpp", "--bench", "pocket", "--limit",
                 "2", "--max-new-tokens", "16"]) == 0
    assert ("micro-f16.gguf (llama.cpp) on pocket (2 tasks, plain prompts): pass@1"
            in capsys.readouterr().out)
    assert (tmp_path / "runs/eval/micro-f16.gguf/pocket-llama.cpp.json").is_file()
    status = main(["eval", str(path), "--runtime", "llama.cpp", "--bench", "pocket", "--dtype",
                   "bf16"])
    one_line_error(status, capsys, "--dtype: torch settings")


@needs_llama
def test_torch_and_llama_cpp_results_of_one_file_do_not_mix(tiny_dirs, tmp_path):
    """The same GGUF evaluated by both runtimes has two keys: one's journal refuses the
    other's run (and their default result files differ: see the CLI test)."""
    gguf = tiny_dirs["gguf"]
    config = EvalConfig(bench="pocket", limit=1, max_new_tokens=4)
    out = tmp_path / "one.json"
    bitfront.evaluate(str(gguf), config, out=out, runtime="llama.cpp", show_progress=False)
    with pytest.raises(BitfrontError, match="other settings or another model"):
        bitfront.evaluate(str(gguf), config, out=out, show_progress=False)


def test_bad_runtime_inputs_are_one_line_errors(tiny_dirs, capsys, monkeypatch):
    gguf = tiny_dirs["gguf"]
    status = main(["eval", str(tiny_dirs["qwen3"]), "--runtime", "llama.cpp", "--bench",
                   "pocket"])
    one_line_error(status, capsys, "runs a .gguf file")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the extra were not installed
    status = main(["eval", str(gguf), "--runtime", "llama.cpp", "--bench", "pocket"])
    one_line_error(status, capsys, "bitfront[llama]")
    lm = load_local(gguf, device="cpu")
    plan = BitPlan.uniform(layer_space(lm), lm.fingerprint(), 4)
    with pytest.raises(BitfrontError, match="unknown runtime"):
        bitfront.evaluate(str(gguf), runtime="llama")
    with pytest.raises(BitfrontError, match="pass the .gguf file's path"):
        bitfront.evaluate(lm, runtime="llama.cpp")
    with pytest.raises(BitfrontError, match="export the plan with `--format gguf`"):
        bitfront.evaluate(str(gguf), plan=plan, runtime="llama.cpp")
