"""Training the pocket pair the way CoDA was made from Qwen3: same backbone, tokenizer, corpus.

Phase 1 trains the autoregressive twin, a Qwen3ForCausalLM, with next-token cross-entropy.
Phase 2 copies its trained weights into a `CoDANetwork` (the same backbone, bidirectional,
logits shifted by one) and continues training with CoDA's masked-diffusion objective
(t ~ U(eps, 1), tokens masked with probability t, masked-token cross-entropy weighted by 1/t)
and CoDA's unmaskable-prefix curriculum (`Phase.prefix_share`). The diffusion twin has thus
seen both phases' tokens, as CoDA has seen Qwen3's and its own.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM

import bitfront
from bitfront.data.corpus import Corpus, build_corpus
from bitfront.data.mbpp import load_mbpp, mbpp_split, pocket_prompt
from bitfront.data.pocket_bench import pocket_split
from bitfront.models.base import CodeLM
from bitfront.models.causal import CausalLM
from bitfront.models.coda import CoDANetwork, CoDATokens, save_coda_network
from bitfront.models.diffusion import DiffusionLM
from bitfront.pocket.tokenizer import EOS, MASK, PAD, train_tokenizer
from bitfront.progress import progress_bar

RECORD_FILE = "training.json"


@dataclass(frozen=True)
class Phase:
    """One training phase: optimizer steps, peak learning rate, linear warm-up steps, and
    the share of rows that keep a random-length prefix unmasked (CoDA's "unmaskable prefix"
    curriculum, which teaches the generation regime: context visible, continuation masked;
    diffusion phase only)."""

    steps: int
    lr: float
    warmup: int
    prefix_share: float = 0.0


@dataclass(frozen=True)
class PocketSize:
    """Everything that defines a pocket pair except the seed."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    seq_len: int
    batch_size: int
    ar: Phase  # phase 1: next-token training of the AR twin from random weights
    diffusion: Phase  # phase 2: masked-diffusion training of the trained AR weights
    mbpp_repeats: int  # copies of each MBPP train task in the corpus
    bench_repeats: int  # copies of each pocket-benchmark train task in the corpus
    max_stdlib_chars: int | None  # None: the whole stdlib
    eval_tasks: int | None  # MBPP test tasks scored after training (None: all 500)

    def names(self) -> tuple[str, str]:
        suffix = "" if self.name == "default" else f"-{self.name}"
        return f"pocket-ar{suffix}", f"pocket-diffusion{suffix}"

    def tokens(self, phase: Phase) -> int:
        """Training tokens of one phase."""
        return phase.steps * self.batch_size * self.seq_len

    def backbone(self, tokenizer) -> Qwen3Config:
        return Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim, max_position_embeddings=4 * self.seq_len,
            rope_theta=10_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
            use_cache=False,
        )


SIZES: dict[str, PocketSize] = {
    "micro": PocketSize(
        name="micro", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, intermediate_size=192, seq_len=128, batch_size=16,
        ar=Phase(steps=100, lr=3e-3, warmup=10),
        diffusion=Phase(steps=100, lr=3e-3, warmup=10, prefix_share=0.5),
        mbpp_repeats=3, bench_repeats=1, max_stdlib_chars=400_000, eval_tasks=40,
    ),
    # 33 min on 2 CPU cores (partly shared); phase 1 sees 8.2M tokens (0.74 of the corpus),
    # phase 2 9.8M. Shipped in bitfront/pocket/weights/.
    "default": PocketSize(
        name="default", vocab_size=4096, hidden_size=128, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=32, intermediate_size=384, seq_len=256, batch_size=16,
        ar=Phase(steps=2000, lr=3e-3, warmup=100),
        diffusion=Phase(steps=2400, lr=2e-3, warmup=40, prefix_share=0.5),
        mbpp_repeats=3, bench_repeats=20, max_stdlib_chars=None, eval_tasks=None,
    ),
}


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents as one token stream, each followed by end-of-text."""
    pad = tokenizer.convert_tokens_to_ids(PAD)
    ids: list[int] = []
    for encoded in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(pad)
    return torch.tensor(ids, dtype=torch.long)


def _schedule(step: int, phase: Phase) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < phase.warmup:
        return (step + 1) / phase.warmup
    progress = (step - phase.warmup) / max(1, phase.steps - phase.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _batch(stream: torch.Tensor, size: PocketSize, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - size.seq_len, (size.batch_size,), generator=generator)
    return torch.stack([stream[s : s + size.seq_len] for s in starts.tolist()])


def _unmaskable_prefixes(shape: torch.Size, share: float, generator: torch.Generator
                         ) -> torch.Tensor | None:
    """Maskable positions [B, L]: for a `share` of the rows only those after a cut drawn
    uniformly from [1, L); None when `share` is 0."""
    if share == 0:
        return None
    rows, length = shape
    cuts = torch.randint(1, length, (rows,), generator=generator)
    cuts[torch.rand(rows, generator=generator) >= share] = 0
    return torch.arange(length)[None, :] >= cuts[:, None]


def fit(lm: CodeLM, stream: torch.Tensor, size: PocketSize, phase: Phase, seed: int, bar,
        task) -> list:
    """Train `lm.module` in place for one phase on seeded batches of `stream`; returns the
    loss curve."""
    module = lm.module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=phase.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, phase))
    generator = torch.Generator().manual_seed(seed)
    curve, smoothed = [], None
    for step in range(phase.steps):
        batch = _batch(stream, size, generator)
        maskable = _unmaskable_prefixes(batch.shape, phase.prefix_share, generator)
        extra = {"maskable": maskable} if maskable is not None else {}
        loss = lm.loss(batch, seed=seed * 1_000_003 + step, **extra)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        if step % 10 == 0 or step == phase.steps - 1:
            curve.append([step, round(loss.item(), 4)])
        bar.update(task, advance=1, info=f"loss {smoothed:.3f}")
    module.eval()
    return curve


@torch.no_grad()
def heldout_metrics(lm: CodeLM, holdout: torch.Tensor, size: PocketSize, seed: int,
                    mbpp_source=None) -> dict:
    """Validation loss on held-out stdlib files and top-1 accuracy on the solutions of MBPP
    test tasks and of pocket-benchmark validation tasks (AR: next token; diffusion: 50% of
    the solution masked)."""
    chunks = holdout[: (len(holdout) // size.seq_len) * size.seq_len].view(-1, size.seq_len)
    chunks = chunks[:64]
    losses = [lm.loss(chunks[i : i + 16], seed=seed + i).item() for i in range(0, len(chunks), 16)]
    extra = {"mask_ratios": (0.5,)} if lm.family == "diffusion" else {}
    metrics: dict = {"heldout_loss": round(sum(losses) / len(losses), 4)}
    sets = {"mbpp_test": mbpp_split(load_mbpp(mbpp_source), "test")[: size.eval_tasks],
            "pocket_validation": pocket_split("validation")}
    for label, tasks in sets.items():
        scores = lm.score([pocket_prompt(t) for t in tasks], [t.solution for t in tasks],
                          batch_size=16, seed=seed, **extra)
        metrics[f"{label}_top1"] = round(scores.mean_accuracy, 4)
        metrics[f"{label}_tasks"] = len(tasks)
    return metrics


def init_ar(config: Qwen3Config, seed: int) -> Qwen3ForCausalLM:
    """The AR twin's seeded random initial weights (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen3ForCausalLM(config)


def diffusion_from_ar(ar: Qwen3ForCausalLM) -> CoDANetwork:
    """The diffusion twin's starting point: a `CoDANetwork` holding a copy of `ar`'s weights."""
    with torch.random.fork_rng(devices=[]):
        network = CoDANetwork(copy.deepcopy(ar.config))
    network.load_state_dict(ar.state_dict())  # same names: strict, copies every tensor
    return network


def _save(lm: CodeLM, tokenizer, tokens: CoDATokens, directory: Path, record: dict) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        if lm.family == "ar":
            module = lm.module
            module.config.pad_token_id = tokens.pad
            module.config.eos_token_id = tokens.eos
            module.generation_config.pad_token_id = tokens.pad
            module.generation_config.eos_token_id = [tokens.eos, tokens.pad]
            module.save_pretrained(tmp)
        else:
            save_coda_network(lm.module, tokens, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def _run_phase(lm: CodeLM, objective: str, stream: torch.Tensor, size: PocketSize,
               phase: Phase, seed: int, bar, show_progress: bool) -> dict:
    """Train one phase and describe it for the training record."""
    task = bar.add_task(f"training {lm.name} ({objective})", total=phase.steps, info="",
                        visible=show_progress)
    wall, cpu = time.time(), time.process_time()
    curve = fit(lm, stream, size, phase, seed, bar, task)
    return {"objective": objective, "steps": phase.steps, "tokens": size.tokens(phase),
            "train_seconds": round(time.time() - wall, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "threads": torch.get_num_threads(), "loss_curve": curve}


def train_pair(size: PocketSize, out_root: Path, *, seed: int = 0, mbpp_source=None,
               show_progress: bool = True) -> dict[str, Path]:
    """Train the AR twin of `size`, then the diffusion twin from it; save both under
    `out_root/<name>`."""
    started = time.time()
    corpus: Corpus = build_corpus(seed=seed, max_stdlib_chars=size.max_stdlib_chars,
                                  mbpp_repeats=size.mbpp_repeats,
                                  bench_repeats=size.bench_repeats, mbpp_source=mbpp_source)
    tokenizer = train_tokenizer(corpus.train, size.vocab_size)
    stream = token_stream(tokenizer, corpus.train)
    holdout = token_stream(tokenizer, corpus.holdout)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (PAD, EOS, MASK)}
    tokens = CoDATokens(mask=ids[MASK], pad=ids[PAD], eos=ids[EOS])
    ar_name, diffusion_name = size.names()
    ar = CausalLM(ar_name, init_ar(size.backbone(tokenizer), seed), tokenizer)
    common = {
        "size": asdict(size),
        "seed": seed,
        "parameters": sum(p.numel() for p in ar.module.parameters()),
        "corpus": {
            "fingerprint": corpus.fingerprint(),
            "train_documents": len(corpus.train),
            "train_tokens": len(stream),
            "python_stdlib": platform.python_version(),
        },
        "prepare_seconds": round(time.time() - started, 1),
        "versions": {"bitfront": bitfront.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    paths = {}

    def finish(lm: CodeLM, phases: list[dict]) -> None:
        record = {
            "name": lm.name,
            "family": lm.family,
            **common,
            "phases": phases,
            "tokens_seen": sum(p["tokens"] for p in phases),
            "train_seconds": round(sum(p["train_seconds"] for p in phases), 1),
            "metrics": heldout_metrics(lm, holdout, size, seed, mbpp_source),
        }
        paths[lm.name] = out_root / lm.name
        _save(lm, tokenizer, tokens, paths[lm.name], record)

    with progress_bar() as bar:
        ar_phase = _run_phase(ar, "next-token", stream, size, size.ar, seed, bar, show_progress)
        # Copied before saving: saving sets the AR config's pad id, which would freeze the
        # pad embedding (padding_idx) during the diffusion phase.
        diffusion = DiffusionLM(diffusion_name, diffusion_from_ar(ar.module), tokenizer, tokens)
        finish(ar, [ar_phase])
        diffusion_phase = _run_phase(diffusion, "masked-diffusion", stream, size,
                                     size.diffusion, seed + 1, bar, show_progress)
        finish(diffusion, [ar_phase, diffusion_phase])
    return paths
