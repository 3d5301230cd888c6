"""Training the pocket pair: same backbone, tokenizer, corpus, token budget and seed.

The autoregressive twin is a Qwen3ForCausalLM trained with next-token cross-entropy; the
diffusion twin is a `CoDANetwork` trained with CoDA's recipe (t ~ U(eps, 1), tokens masked
with probability t, masked-token cross-entropy weighted by 1/t, logits shifted by one). Both
start from the same initial weights and see the same batches in the same order.
"""

from __future__ import annotations

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
from bitfront.data.mbpp import load_mbpp, mbpp_split
from bitfront.evaluators.prompts import pocket_prompt
from bitfront.models.base import CodeLM
from bitfront.models.causal import CausalLM
from bitfront.models.coda import CoDANetwork, CoDATokens, save_coda_network
from bitfront.models.diffusion import DiffusionLM
from bitfront.pocket.tokenizer import EOS, MASK, PAD, train_tokenizer
from bitfront.progress import progress_bar

RECORD_FILE = "training.json"


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
    steps: int
    lr: float
    warmup: int
    max_stdlib_chars: int | None  # None: the whole stdlib
    eval_tasks: int | None  # MBPP test tasks scored after training (None: all 500)

    def names(self) -> tuple[str, str]:
        suffix = "" if self.name == "default" else f"-{self.name}"
        return f"pocket-ar{suffix}", f"pocket-diffusion{suffix}"

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
        steps=150, lr=3e-3, warmup=15, max_stdlib_chars=400_000, eval_tasks=40,
    ),
    # About 0.9 epoch of the corpus (2.3M tokens); under 5 min per model on 2 CPU cores.
    "default": PocketSize(
        name="default", vocab_size=4096, hidden_size=128, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=32, intermediate_size=384, seq_len=256, batch_size=16,
        steps=560, lr=2e-3, warmup=40, max_stdlib_chars=None, eval_tasks=None,
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


def _schedule(step: int, size: PocketSize) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < size.warmup:
        return (step + 1) / size.warmup
    progress = (step - size.warmup) / max(1, size.steps - size.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _batch(stream: torch.Tensor, size: PocketSize, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - size.seq_len, (size.batch_size,), generator=generator)
    return torch.stack([stream[s : s + size.seq_len] for s in starts.tolist()])


def fit(lm: CodeLM, stream: torch.Tensor, size: PocketSize, seed: int, bar, task) -> list:
    """Train `lm.module` in place on seeded batches of `stream`; returns the loss curve."""
    module = lm.module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=size.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, size))
    generator = torch.Generator().manual_seed(seed)
    curve, smoothed = [], None
    for step in range(size.steps):
        loss = lm.loss(_batch(stream, size, generator), seed=seed * 1_000_003 + step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        if step % 10 == 0 or step == size.steps - 1:
            curve.append([step, round(loss.item(), 4)])
        bar.update(task, advance=1, info=f"loss {smoothed:.3f}")
    module.eval()
    return curve


@torch.no_grad()
def heldout_metrics(lm: CodeLM, holdout: torch.Tensor, size: PocketSize, seed: int,
                    mbpp_source=None) -> dict:
    """Validation loss on held-out stdlib files and top-1 accuracy on MBPP test solutions
    (AR: next token; diffusion: 50% of the solution masked)."""
    chunks = holdout[: (len(holdout) // size.seq_len) * size.seq_len].view(-1, size.seq_len)
    chunks = chunks[:64]
    losses = [lm.loss(chunks[i : i + 16], seed=seed + i).item() for i in range(0, len(chunks), 16)]
    tasks = mbpp_split(load_mbpp(mbpp_source), "test")[: size.eval_tasks]
    prompts = [pocket_prompt(t) for t in tasks]
    targets = [t.solution for t in tasks]
    extra = {"mask_ratios": (0.5,)} if lm.family == "diffusion" else {}
    scores = lm.score(prompts, targets, batch_size=16, seed=seed, **extra)
    return {
        "heldout_loss": round(sum(losses) / len(losses), 4),
        "mbpp_test_top1": round(scores.mean_accuracy, 4),
        "mbpp_test_tasks": len(tasks),
    }


def _init_pair(config: Qwen3Config, seed: int) -> tuple[Qwen3ForCausalLM, CoDANetwork]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ar = Qwen3ForCausalLM(config)
        diffusion = CoDANetwork(config)
    diffusion.load_state_dict(ar.state_dict())  # identical starting point
    return ar, diffusion


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


def train_pair(size: PocketSize, out_root: Path, *, seed: int = 0, mbpp_source=None,
               show_progress: bool = True) -> dict[str, Path]:
    """Train both pocket models of `size` and save them under `out_root/<name>`."""
    started = time.time()
    corpus: Corpus = build_corpus(seed=seed, max_stdlib_chars=size.max_stdlib_chars,
                                  mbpp_source=mbpp_source)
    tokenizer = train_tokenizer(corpus.train, size.vocab_size)
    stream = token_stream(tokenizer, corpus.train)
    holdout = token_stream(tokenizer, corpus.holdout)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (PAD, EOS, MASK)}
    tokens = CoDATokens(mask=ids[MASK], pad=ids[PAD], eos=ids[EOS])
    config = size.backbone(tokenizer)
    ar_module, diffusion_module = _init_pair(config, seed)
    ar_name, diffusion_name = size.names()
    pair: dict[str, CodeLM] = {
        ar_name: CausalLM(ar_name, ar_module, tokenizer),
        diffusion_name: DiffusionLM(diffusion_name, diffusion_module, tokenizer, tokens),
    }
    prep_seconds = time.time() - started
    paths = {}
    with progress_bar() as bar:
        for name, lm in pair.items():
            task = bar.add_task(f"training {name}", total=size.steps, info="",
                                visible=show_progress)
            t0 = time.time()
            curve = fit(lm, stream, size, seed, bar, task)
            train_seconds = time.time() - t0
            record = {
                "name": name,
                "family": lm.family,
                "size": asdict(size),
                "seed": seed,
                "parameters": sum(p.numel() for p in lm.module.parameters()),
                "corpus": {
                    "fingerprint": corpus.fingerprint(),
                    "train_documents": len(corpus.train),
                    "train_tokens": len(stream),
                    "python_stdlib": platform.python_version(),
                },
                "tokens_seen": size.steps * size.batch_size * size.seq_len,
                "prepare_seconds": round(prep_seconds, 1),
                "train_seconds": round(train_seconds, 1),
                "loss_curve": curve,
                "metrics": heldout_metrics(lm, holdout, size, seed, mbpp_source),
                "versions": {"bitfront": bitfront.__version__, "torch": torch.__version__,
                             "transformers": transformers.__version__},
            }
            paths[name] = out_root / name
            _save(lm, tokenizer, tokens, paths[name], record)
    return paths
