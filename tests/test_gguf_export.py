"""`--format gguf`: real GGUF files made by llama.cpp's own quantizer, read back and run by
llama.cpp (llama-cpp-python, the `bitfront[llama]` extra)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tiny_models as tm
import torch
from test_export import small_disk  # noqa: F401 - the fixture

from bitfront.errors import BitfrontError
from bitfront.exports.formats import GGML_TYPES, gguf_tensor_names
from bitfront.models.load import load_model
from bitfront.space.layers import layer_space
from bitfront.space.plan import BitPlan

pytest.importorskip("llama_cpp", reason="needs the bitfront[llama] extra (llama-cpp-python)")

from bitfront.exports.gguf import FALLBACKS, export_gguf, gguf_size, summary  # noqa: E402
from bitfront.runtimes.llama_cpp import load_llama, require_llama_cpp, tensor_types_of  # noqa: E402

CYCLE = (2, 3, 4, 8, 16)
SMALL_CALIB = {"samples": 8, "seq_len": 64, "batch_size": 8}
CODE = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"


def mixed_plan(lm, bits=None) -> BitPlan:
    """Every bitwidth in turn over the layers (or `bits` for all), calibrated on a few windows."""
    names = layer_space(lm).names()
    return BitPlan.from_bits(lm.fingerprint(), {n: bits or CYCLE[i % len(CYCLE)]
                                                for i, n in enumerate(names)},
                             calibration=SMALL_CALIB)


def plan_types(plan: BitPlan) -> dict[str, str]:
    names = gguf_tensor_names(list(plan.specs), "qwen3")
    return {names[m]: GGML_TYPES[s.bits] for m, s in plan.specs.items()}


@pytest.fixture(scope="module")
def qwen3_lm(tmp_path_factory):
    """A tiny Qwen3 (real config and tokenizer) whose rows are all multiples of 256."""
    directory = tm.tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "qwen3", hidden_size=256,
                              intermediate_size=512, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=64)
    return load_model(str(directory), device="cpu", dtype="float32", show_progress=False)


@pytest.fixture(scope="module")
def micro_lm(micro_pair):
    return load_model("pocket-ar-micro", device="cpu", dtype="float32", show_progress=False)


def test_a_mixed_plan_keeps_its_types_and_predicted_size(qwen3_lm, tmp_path):
    plan = mixed_plan(qwen3_lm)
    result = export_gguf(qwen3_lm, plan, tmp_path / "mixed.gguf")
    written = tensor_types_of(result.path)
    assert {name: written[name] for name in plan_types(plan)} == plan_types(plan)
    assert set(plan_types(plan).values()) == set(GGML_TYPES.values()) and result.fallbacks == {}
    assert written["token_embd.weight"] == "f16" and written["output_norm.weight"] == "f32"
    assert result.bytes == result.path.stat().st_size
    assert abs(result.predicted_bytes / result.bytes - 1) <= 0.02
    assert gguf_size(qwen3_lm, plan) == result.predicted_bytes
    record = json.loads(result.record.read_text())
    quantized = sum(s.quantized for s in plan.specs.values())
    assert record["types"] == written and record["importance"]["tensors"] == quantized
    assert record["importance"]["calibration"] == SMALL_CALIB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.gguf", "mixed.gguf.json"]
    # llama.cpp loads it and tokenizes like the model's own (Qwen2 pre-tokenizer, specials).
    llm = load_llama(result.path, n_ctx=128)
    text = "<|im_start|>user\n" + CODE + "<|im_end|>"
    ids = qwen3_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    assert len(llm(CODE, max_tokens=4, temperature=0)["choices"][0]["text"]) > 0


def test_a_16_bit_gguf_computes_the_logits_of_bitfronts_forward(qwen3_lm, tmp_path):
    """llama.cpp holds the weights in f16 (relative rounding 2^-11) and rounds activations
    to f16 in its f16 matrix products, so logits differ from bitfront's float32 forward by
    about 1e-3 relative per layer: measured 0.5% of the logits' spread. Allowed: 2%, and
    the same top token everywhere."""
    result = export_gguf(qwen3_lm, mixed_plan(qwen3_lm, bits=16), tmp_path / "f16.gguf")
    assert set(tensor_types_of(result.path).values()) == {"f16", "f32"}
    ids = qwen3_lm.tokenizer(CODE, add_special_tokens=False)["input_ids"]
    llm = load_llama(result.path, n_ctx=128, logits_all=True)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[:len(ids)])
    with torch.no_grad():
        ours = qwen3_lm.logits(torch.tensor([ids]))[0].numpy()
    assert np.abs(theirs - ours).max() <= 0.02 * ours.std()
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


def test_pocket_ar_micro_says_which_tensors_fell_back(micro_lm, tmp_path):
    """Rows of 64 and 192 take no 256-block k-quant: llama.cpp's fallbacks, predicted,
    recorded and printed; the size still within 2%; the importance matrix changes the file."""
    plan = mixed_plan(micro_lm)
    result = export_gguf(micro_lm, plan, tmp_path / "micro.gguf")
    written = tensor_types_of(result.path)
    modules = dict(micro_lm.module.named_modules())
    names = gguf_tensor_names(list(plan.specs), "qwen3")
    expected = {names[m]: {"plan": GGML_TYPES[s.bits], "written": FALLBACKS[GGML_TYPES[s.bits]],
                           "row": modules[m].in_features}
                for m, s in plan.specs.items() if GGML_TYPES[s.bits] in FALLBACKS}
    assert expected and result.fallbacks == expected
    assert {n: written[n] for n in expected} == {n: f["written"] for n, f in expected.items()}
    assert json.loads(result.record.read_text())["fallbacks"] == expected
    lines = summary(result.path)
    assert any(line.startswith("fallback q4_K -> q5_0: ") for line in lines)
    assert abs(result.predicted_bytes / result.bytes - 1) <= 0.02
    llm = load_llama(result.path, n_ctx=64)
    assert llm.tokenize(b"def f():", add_bos=False) == micro_lm.tokenizer(
        "def f():", add_special_tokens=False)["input_ids"]
    plain = export_gguf(micro_lm, plan, tmp_path / "plain.gguf", importance=False)
    assert plain.types == result.types
    assert plain.path.read_bytes() != result.path.read_bytes()


def test_diffusion_models_are_refused_in_one_line(micro_pair, tmp_path):
    lm = load_model("pocket-diffusion-micro", device="cpu", dtype="float32",
                    show_progress=False)
    with pytest.raises(BitfrontError, match="diffusion") as info:
        export_gguf(lm, mixed_plan(lm, bits=4), tmp_path / "d.gguf")
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(micro_lm, small_disk):  # noqa: F811
    with pytest.raises(BitfrontError, match="No space left on device") as info:
        export_gguf(micro_lm, mixed_plan(micro_lm), small_disk / "m.gguf", importance=False)
    assert "\n" not in str(info.value) and list(small_disk.iterdir()) == []


def test_a_file_llama_cpp_cannot_load_is_one_line(tmp_path):
    path = tmp_path / "not.gguf"
    path.write_text("not a model")
    for bad, reason in ((path, "invalid magic"), (tmp_path / "missing.gguf", "no GGUF file")):
        with pytest.raises(BitfrontError, match=reason) as info:
            load_llama(bad)
        assert "\n" not in str(info.value)


def test_without_the_extra_the_export_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(BitfrontError, match=r"pip install 'bitfront\[llama\]'"):
        require_llama_cpp()
