"""Subject models: real on-disk formats, CoDA's semantics, generation and scoring."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from bitfront.errors import CheckpointError, UnknownModelError
from bitfront.models import GenerationOptions, Prompt, base, load_local, load_model
from bitfront.models.base import recomputed_blocks, token_stats
from bitfront.models.causal import CausalLM
from bitfront.models.coda import CoDANetwork, backbone_config
from bitfront.models.diffusion import DiffusionLM, seeded_generator
from bitfront.models.diffusion_sampling import ALGORITHMS, DiffusionOptions

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def coda(tiny_dirs) -> DiffusionLM:
    return load_model(str(tiny_dirs["coda"]), device="cpu")


@pytest.fixture(scope="module")
def qwen3(tiny_dirs) -> CausalLM:
    return load_model(str(tiny_dirs["qwen3"]), device="cpu")


def test_real_format_checkpoints_load_through_the_same_path(tiny_dirs):
    for key, family in [("coda", "diffusion"), ("coda-sharded", "diffusion"), ("qwen3", "ar"),
                        ("llama", "ar"), ("gguf", "ar")]:
        lm = load_model(str(tiny_dirs[key]), device="cpu")
        assert lm.family == family, key
        assert lm.tokenizer.convert_tokens_to_ids("<|mask|>") == (3 if key == "gguf" else 151669)
        names = list(lm.quantizable())
        assert len(names) == 2 * 7, key
        assert [n.rsplit(".", 1)[1] for n in names[:7]] == LINEARS
        assert "lm_head" not in names and "lm_head" in lm.quantizable(include_head=True)


def test_coda_matches_a_directly_built_network(tiny_dirs, coda):
    raw = json.loads((tiny_dirs["coda"] / "config.json").read_text())
    assert raw["model_type"] == "CoDA" and raw["mask_token_id"] == 151669
    direct = CoDANetwork(backbone_config(raw))
    direct.load_state_dict(load_file(tiny_dirs["coda"] / "model.safetensors"))
    ids = torch.randint(0, 151936, (2, 12))
    torch.testing.assert_close(coda.logits(ids), direct.eval()(ids))
    sharded = load_model(str(tiny_dirs["coda-sharded"]), device="cpu")
    assert coda.tokens == sharded.tokens
    assert coda.tokens.mask == 151669 and coda.tokens.pad == 151643
    assert not torch.equal(sharded.module.lm_head.weight, sharded.module.model.embed_tokens.weight)


def test_gguf_holds_the_same_model(tiny_dirs):
    hf = load_model(str(tiny_dirs["qwen3-hd128"]), device="cpu")
    gguf = load_model(str(tiny_dirs["gguf"]), device="cpu")
    ids = torch.randint(0, len(hf.tokenizer), (1, 9))
    torch.testing.assert_close(gguf.logits(ids), hf.logits(ids), rtol=1e-4, atol=1e-4)
    assert gguf.tokenizer.decode(gguf.encode("def add(a, b):")) == "def add(a, b):"


def test_coda_is_bidirectional_and_qwen3_is_causal(coda, qwen3):
    ids = torch.randint(0, 151000, (1, 10))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 151000
    for lm, expect_change in [(coda, True), (qwen3, False)]:
        with torch.no_grad():
            a, b = lm.logits(ids), lm.logits(changed)
        early = (a[0, :5] - b[0, :5]).abs().max().item()
        assert (early > 1e-4) is expect_change, lm.family


def test_coda_logits_are_shifted_right_by_one(coda):
    ids = torch.randint(0, 151000, (1, 8))
    with torch.no_grad():
        hidden = coda.module.model(input_ids=ids, attention_mask=dict.fromkeys(
            coda.module.config.layer_types)).last_hidden_state
        raw = coda.module.lm_head(hidden)
        shifted = coda.logits(ids)
    torch.testing.assert_close(shifted[:, 1:], raw[:, :-1])
    torch.testing.assert_close(shifted[:, 0], raw[:, 0])
    picked = torch.zeros(1, 8, dtype=torch.bool)
    picked[0, [0, 3, 7]] = True
    with torch.no_grad():
        torch.testing.assert_close(coda.logits_at(ids, picked), shifted[picked])


def test_coda_attends_to_padding(coda):
    """No attention mask at all: the pad tokens after a sequence change its logits."""
    ids = torch.randint(0, 151000, (1, 6))
    padded = torch.cat([ids, torch.full((1, 3), coda.tokens.pad)], dim=1)
    with torch.no_grad():
        diff = (coda.logits(ids)[0, :6] - coda.logits(padded)[0, :6]).abs().max()
    assert diff > 1e-4


def test_missing_or_unexpected_coda_tensors_are_named(tiny_dirs, tmp_path):
    state = load_file(tiny_dirs["coda"] / "model.safetensors")
    for case in ("missing", "unexpected"):
        broken = tmp_path / case
        shutil.copytree(tiny_dirs["coda"], broken)
        edited = dict(state)
        if case == "missing":
            edited.pop("model.layers.1.mlp.down_proj.weight")
        else:
            edited["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
        save_file(edited, broken / "model.safetensors")
        with pytest.raises(CheckpointError) as info:
            load_local(broken, device="cpu")
        message = str(info.value)
        assert f"1 {case} tensors" in message
        assert ("down_proj" if case == "missing" else "self_attn.extra") in message


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_diffusion_sampling_fills_every_mask_deterministically(coda, alg):
    opts = DiffusionOptions(steps=6, alg=alg, alg_temp=0.5 if alg == "entropy" else 0.0)
    ids = torch.randint(0, 151000, (2, 5))
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(7)
        from bitfront.models.diffusion_sampling import diffusion_sample

        runs.append(diffusion_sample(coda.logits_at, ids, max_new_tokens=12,
                                     mask_id=coda.tokens.mask, opts=opts, temperature=0.7,
                                     top_p=0.9, generator=gen))
    assert runs[0].shape == (2, 17)
    assert not (runs[0] == coda.tokens.mask).any()
    assert torch.equal(runs[0][:, :5], ids)
    assert torch.equal(runs[0], runs[1])


def test_blockwise_diffusion_decoding_fills_blocks(coda):
    from bitfront.models.diffusion_sampling import diffusion_sample

    gen = torch.Generator().manual_seed(0)
    out = diffusion_sample(coda.logits_at, torch.randint(0, 151000, (1, 4)), max_new_tokens=12,
                           mask_id=coda.tokens.mask,
                           opts=DiffusionOptions(steps=6, block_length=4),
                           generator=gen)
    assert not (out == coda.tokens.mask).any()
    with pytest.raises(ValueError, match="multiple"):
        diffusion_sample(coda.logits_at, torch.zeros(1, 2, dtype=torch.long), max_new_tokens=10,
                         mask_id=coda.tokens.mask, opts=DiffusionOptions(block_length=4),
                         generator=gen)


def test_generation_both_families(coda, qwen3):
    prompts = [Prompt("Write a function to add two numbers."), "def add(a, b):"]
    for lm in (coda, qwen3):
        assert lm.use_chat  # the real tokenizer carries CoDA's chat template
        first = lm.generate(prompts, GenerationOptions(max_new_tokens=8))
        again = lm.generate(prompts, max_new_tokens=8)
        assert first == again and len(first) == 2 and all(isinstance(t, str) for t in first)
        sampled = lm.generate(prompts, max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3)
        assert sampled == lm.generate(prompts, max_new_tokens=8, temperature=0.8, top_p=0.9,
                                      seed=3)
    rendered = qwen3.render(Prompt("hi", "Here is"))
    assert rendered.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.endswith("Here is")


def test_ar_batched_left_padding_matches_single_prompts(qwen3):
    prompts = ["def f(x):", "import os\nimport sys\n\ndef main(argv):"]
    batched = qwen3.generate(prompts, max_new_tokens=6, batch_size=2)
    single = [qwen3.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single


def test_stop_strings_cut_the_answer(qwen3):
    full = qwen3.generate(["def f(x):"], max_new_tokens=12)[0]
    assert len(full) > 2
    stop = full[1:3]
    cut = qwen3.generate(["def f(x):"], max_new_tokens=12, stop=[stop])[0]
    assert cut == full[: full.find(stop)]
    # Each row of a batch stops on its own; the stop tables are built once per stop set.
    prompts = ["def f(x):", "import os\nimport sys\n\ndef main(argv):"]
    batched = qwen3.generate(prompts, max_new_tokens=12, batch_size=2, stop=[stop])
    assert batched == [qwen3.generate([p], max_new_tokens=12, stop=[stop])[0] for p in prompts]
    assert qwen3._stop_criteria((stop,)) is qwen3._stop_criteria((stop,))


def test_scores_lie_in_range(coda, qwen3):
    prompts = ["def add(a, b):", Prompt("Reverse a string.", "```python\n")]
    targets = ["\n    return a + b\n", "def rev(s):\n    return s[::-1]\n"]
    for lm in (coda, qwen3):
        result = lm.score(prompts, targets, batch_size=1)
        assert len(result.accuracy) == 2
        assert all(0.0 <= a <= 1.0 for a in result.accuracy)
        assert all(lp <= 0.0 for lp in result.logprob)
        batched = lm.score(prompts, targets, batch_size=2)
        if lm.family == "ar":  # right padding with an attention mask changes nothing
            torch.testing.assert_close(torch.tensor(batched.logprob),
                                       torch.tensor(result.logprob), rtol=1e-4, atol=1e-4)


def test_unknown_names_and_bad_directories(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(UnknownModelError, match="could not fetch"):
        load_model("nobody/no-such-model-anywhere")


def _full_logit_references(lm, ids):
    """(loss, top-1 of the targets, log-probs of the targets) from full [B, L, V] logits."""
    if lm.family == "ar":
        logits = lm.logits(ids)[:, :-1]
        targets = ids[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 targets.reshape(-1))
        return loss, logits, targets
    noisy, masked, t = lm.noisy_batch(ids, seeded_generator(0))
    logits = lm.logits(noisy)[masked]
    ce = torch.nn.functional.cross_entropy(logits, ids[masked], reduction="none")
    return (ce * (1 / t)[:, None].expand_as(masked)[masked]).sum() / ids.numel(), None, None


@pytest.mark.parametrize("family", ["qwen3", "coda"])
def test_losses_and_scores_run_the_head_in_chunks_with_the_same_result(
        family, coda, qwen3, monkeypatch):
    """No [batch, length, vocab] logits: the head sees at most one chunk of positions (also
    when the backward pass recomputes it), and losses, gradients and scores equal the
    full-logit computation."""
    lm = {"coda": coda, "qwen3": qwen3}[family]
    rows = 7
    monkeypatch.setattr(base, "HEAD_CHUNK_BYTES", 4 * lm.head.out_features * rows)
    seen = []
    hook = lm.head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    ids = torch.randint(5, 60, (3, 16))
    weight = lm.module.model.layers[0].mlp.down_proj.weight
    try:
        chunked = lm.loss(ids, seed=0)
        (grad,) = torch.autograd.grad(chunked, weight)
        assert seen and max(seen) <= rows and sum(seen) > 3 * rows  # forward + recompute
        seen.clear()
        reference, logits, targets = _full_logit_references(lm, ids)
        (reference_grad,) = torch.autograd.grad(reference, weight)
        scores = lm.score_tokens([[5, 6, 7]] * 2 + [[9]], [list(range(10, 40))] * 3)
        assert max(seen[1:]) <= rows  # seen[0]: the full-logit reference above
    finally:
        hook.remove()
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-6)
    # float32 sums in another order: 1.4e-7 apart on a loaded machine (a wrong chunk is ~1e-3)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-6)
    if family == "qwen3":
        full = lm.logits(torch.tensor([[5, 6, 7, *range(10, 40)]]))[0, 2:-1]
        correct, logprob = token_stats(full, torch.arange(10, 40))
        assert scores.accuracy[0] == pytest.approx(correct.mean().item())
        assert scores.logprob[0] == pytest.approx(logprob.mean().item(), rel=1e-5)


def test_recomputed_blocks_keep_gradients_and_second_derivatives(qwen3):
    ids = torch.randint(5, 60, (2, 12))
    weight = qwen3.module.model.layers[1].self_attn.v_proj.weight
    probe = torch.randn_like(weight)

    def hvp():
        (grad,) = torch.autograd.grad(qwen3.loss(ids), weight, create_graph=True)
        return torch.autograd.grad((grad * probe).sum(), weight)[0]

    with sdpa_kernel(SDPBackend.MATH):
        plain = hvp()
        with recomputed_blocks(qwen3.module) as wrapped:
            recomputed = hvp()
    assert wrapped == 2 and "forward" not in vars(qwen3.module.model.layers[0])
    torch.testing.assert_close(recomputed, plain, rtol=1e-4, atol=1e-7)
