"""The llama.cpp latency backend: a table solved from real llama.cpp runs of GGUFs of the
model, chosen by default for AR models of a llama.cpp architecture on the CPU, recorded with
its backend and conditions; diffusion models keep the torch kernels."""

from __future__ import annotations

import json
import warnings

import pytest
from test_batch import bitfront_cmd, one_line_error

from bitfront.config import ConfigError
from bitfront.errors import BitfrontError
from bitfront.models import load_local
from bitfront.objectives.latency import (
    LatencyTable,
    LatencyWarning,
    Workload,
    latency_backend,
    measure_latency_table,
)
from bitfront.runtimes.llama_cpp import llama_cpp_installed
from bitfront.space.layers import layer_space
from bitfront.space.plan import BitPlan
from bitfront.studies.report import latency_note

needs_llama = pytest.mark.skipif(not llama_cpp_installed(), reason="needs the bitfront[llama] "
                                 "extra (llama-cpp-python)")

# One thread: each call counts its CPU time, which other work on the machine does not inflate.
WORKLOAD = Workload(prompt_len=8, answer_len=8, threads=1)


def _table(lm, root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LatencyWarning)  # this machine may well be busy
        return measure_latency_table(lm, layer_space(lm), WORKLOAD, group_size=32, root=root,
                                     show_progress=False, **kw)


@needs_llama
def test_micro_table_from_llama_cpp_runs_with_fallback_types(micro_pair, tmp_path):
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    space = layer_space(lm)
    assert latency_backend(lm, WORKLOAD) == "llama.cpp"  # the default here
    table = _table(lm, tmp_path)
    assert table.backend == "llama.cpp" and table.family == "ar"
    # 64- and 192-long rows: no k-quant fits, llama.cpp falls back to 32-blocks.
    types = table.meta["types"]
    assert {types[f"64|64|{b}"] for b in (2, 3, 4, 8, 16)} == {"q4_0", "q5_0", "q8_0", "f16"}
    assert types["64|64|2"] == types["64|192|3"] == "q4_0" and types["32|64|4"] == "q5_0"
    shapes = {(l.out_features, l.in_features) for l in space.layers}
    assert set(table.layers) == {f"{phase}|{o}|{i}|{b}" for phase in ("prefill", "decode")
                                 for o, i in shapes for b in (2, 3, 4, 8, 16)}
    # Real runs: one per GGUF of the design, enough to solve every (shape, type) cost.
    assert table.meta["runs"] >= 1 + 4 * 3
    assert all(v >= 0 for v in table.layers.values()) and table.rest > 0
    assert table.layers["decode|64|64|2"] == table.layers["decode|64|64|3"]  # both q4_0
    plan = BitPlan.uniform(space, lm.fingerprint(), 4, 32)
    predicted = table.predict(space, plan)
    assert sum(predicted["seconds_by_phase"].values()) == pytest.approx(predicted["seconds"])
    # Recorded with its backend and the conditions it was measured under; cached.
    conditions = table.meta["conditions"]
    assert set(conditions) >= {"cpu_wait", "contended", "load", "cpus", "threads"}
    (path,) = tmp_path.glob("*.json")
    stored = json.loads(path.read_text())
    assert stored["backend"] == "llama.cpp" and stored["meta"]["conditions"] == conditions
    assert _table(lm, tmp_path) == LatencyTable.from_dict(stored)


@needs_llama
def test_smaller_plan_predicted_faster_at_k_quant_shapes(tmp_path):
    import tiny_models as tm

    directory = tm.tiny_qwen3(tmp_path / "qwen3-512", tokenizer=tm.small_tokenizer(),
                              hidden_size=512, intermediate_size=2048, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=128)
    lm = load_local(directory, device="cpu")
    space = layer_space(lm)
    table = _table(lm, tmp_path / "tables", bits=(2, 4, 16))
    assert {table.meta["types"][f"512|512|{b}"] for b in (2, 4, 16)} == {"q2_K", "q4_K", "f16"}
    small, full = (table.predict(space, BitPlan.uniform(space, lm.fingerprint(), b, 32))
                   for b in (2, 16))
    # 2-bit k-quants stream an eighth of f16's bytes: faster however busy the machine is.
    assert small["seconds_by_phase"]["decode"] < full["seconds_by_phase"]["decode"]


def test_diffusion_keeps_torch_and_bad_settings_are_one_line(micro_pair):
    lm = load_local(micro_pair["pocket-diffusion-micro"], device="cpu")
    assert latency_backend(lm, Workload()) == "torch"
    with pytest.raises(BitfrontError, match="llama.cpp has no diffusion architecture") as exc:
        latency_backend(lm, Workload(backend="llama.cpp"))
    assert "\n" not in str(exc.value)
    # A search asking for it fails at once, before calibration or GPTQ.
    res = bitfront_cmd("search", "pocket-diffusion-micro", "--latency-backend", "llama.cpp")
    one_line_error(res, 1, "cannot time pocket-diffusion-micro")
    ar = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    assert latency_backend(ar, Workload(backend="torch")) == "torch"
    # A torch dtype (a study's setting for its diffusion model too) leaves AR to llama.cpp;
    # a batch llama.cpp does not time does not.
    assert latency_backend(ar, Workload(dtype="float32")) == "llama.cpp"
    assert latency_backend(ar, Workload(batch=2)) == "torch"
    for bad, message in [({"backend": "vllm"}, "backend must be one of"),
                         ({"backend": "llama.cpp", "dtype": "float32"}, "dtype must be unset"),
                         ({"backend": "llama.cpp", "batch": 2}, "batch must be 1"),
                         ({"backend": "torch", "threads": 2}, "threads must be unset"),
                         ({"threads": 0}, "threads must be at least 1")]:
        with pytest.raises(ConfigError, match=message) as exc:
            Workload(**bad)
        assert "\n" not in str(exc.value)


def test_report_names_each_models_latency_backend():
    results = [{"label": "ar", "search": {"latency_backend": "llama.cpp"}},
               {"label": "diffusion", "search": {"latency_backend": "torch"}}]
    note = latency_note(results)
    assert "ar: llama.cpp's CPU kernels" in note and "diffusion: bitfront's torch kernels" in note
    assert "not across models" in note
    assert "not across" not in latency_note(results[1:])
    assert latency_note([{"label": "ar", "search": {}}]) == ""  # no latency table
