"""The `CodeLM` interface: one subject model, autoregressive or masked diffusion.

Everything above `models/` talks to a model only through this class: the torch module,
its tokenizer, its quantizable linears, `generate()` for pass@k and `score()` (teacher-forced
top-1 accuracy and mean log-prob of target tokens) for the fast proxy.

Memory: losses, scores and calibration never hold [batch, length, vocab] logits. The model
runs to the head's input (`hidden_at`, only at the positions that are scored), and the head
runs over chunks of those positions (`head_cross_entropy`, `head_token_stats`); under
autograd each chunk is checkpointed, so the backward pass holds one chunk's logits too.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Family = Literal["ar", "diffusion"]


@dataclass(frozen=True)
class Prompt:
    """What to complete: a user turn and the start of the assistant's answer.

    With a chat template the user text becomes a user turn and the prefix opens the assistant
    turn; without one (pocket models, base models) the two are simply concatenated.
    """

    user: str
    assistant_prefix: str = ""


PromptLike = Prompt | str


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings shared by both families (temperature 0 = greedy)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int = 0
    batch_size: int = 8


@dataclass
class TopK:
    """A model's k most likely tokens at each scored position, in the order `score_tokens`
    visits the positions (fixed for fixed inputs and settings), kept on the CPU: the
    reference distributions the KL of another weight set is measured against.

    The tail is the mass outside the top k, as one bucket: log of it, −inf when k = vocab.
    """

    logp: torch.Tensor  # [N, k] float32 log-probabilities, descending
    ids: torch.Tensor  # [N, k] int32 token ids
    tail: torch.Tensor  # [N] float32 log of the mass outside the top k

    def __len__(self) -> int:
        return self.logp.shape[0]

    def rows(self, rows: slice) -> TopK:
        return TopK(self.logp[rows], self.ids[rows], self.tail[rows])

    @staticmethod
    def cat(parts: Sequence[TopK]) -> TopK:
        return TopK(torch.cat([p.logp for p in parts]), torch.cat([p.ids for p in parts]),
                    torch.cat([p.tail for p in parts]))


@dataclass
class ScoreResult:
    """Teacher-forced scores of target texts, one entry per sample."""

    accuracy: list[float]  # top-1 token accuracy on the target tokens, in [0, 1]
    logprob: list[float]  # mean log-probability per target token (<= 0)
    # Mean KL(reference || model) per target token, when scored against a `reference`.
    kl: list[float] | None = None
    topk: TopK | None = None  # the model's top-k at every scored position, when asked

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracy) / max(len(self.accuracy), 1)

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprob) / max(len(self.logprob), 1)

    @property
    def mean_kl(self) -> float | None:
        return None if self.kl is None else sum(self.kl) / max(len(self.kl), 1)


class CodeLM(ABC):
    """A code language model bitfront can quantize, generate from and score."""

    family: ClassVar[Family]

    def __init__(self, name: str, module: nn.Module, tokenizer, *, use_chat: bool | None = None,
                 gguf: Path | None = None):
        self.name = name
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.gguf = gguf  # the GGUF file it was loaded from (the GGUF export copies its tokenizer)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat = has_template if use_chat is None else (use_chat and has_template)
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, family={self.family!r})"

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def fingerprint(self) -> str:
        """A content hash of the weights as loaded (names, shapes, dtypes, bytes).

        Computed on first use and remembered, so take it before swapping weights in.
        """
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=12)
            digest.update(self.family.encode())
            for name, tensor in sorted(self.module.state_dict().items()):
                digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
                data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
                digest.update(data.numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def quantizable(self, include_head: bool = False) -> dict[str, nn.Linear]:
        """Every `nn.Linear` of the network in module order; `lm_head` only when asked."""
        return {
            name: mod
            for name, mod in self.module.named_modules()
            if isinstance(mod, nn.Linear) and (include_head or name != "lm_head")
        }

    def render(self, prompt: PromptLike) -> str:
        """The exact text the model is conditioned on for `prompt`."""
        if isinstance(prompt, str):
            prompt = Prompt(prompt)
        if not self.use_chat:
            return prompt.user + prompt.assistant_prefix
        turn = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.user}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        return turn + prompt.assistant_prefix

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def stop_token_ids(self) -> list[int]:
        """Token ids that end a generated answer (end of turn, end of text)."""
        ids = [self.tokenizer.eos_token_id, self.tokenizer.pad_token_id]
        gen_cfg = getattr(self.module, "generation_config", None)
        extra = getattr(gen_cfg, "eos_token_id", None)
        ids += extra if isinstance(extra, list) else [extra]
        return sorted({i for i in ids if i is not None})

    @abstractmethod
    def hidden_at(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head's input [B, L, H], or [N, H] at the bool mask `positions` [B, L] in
        row-major order, aligned like `logits`."""

    @property
    def head(self) -> nn.Module:
        """The output projection (hidden state -> vocabulary logits)."""
        return self.module.get_output_embeddings()

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Logits aligned so that `logits[:, i]` predicts token `i + 1` (AR) or token `i`
        (diffusion, after CoDA's shift) — see each family's docstring. Full
        [B, L, vocab]: for small inputs; scoring and losses use `hidden_at` and the head in
        chunks."""
        return self.head(self.hidden_at(input_ids, attention_mask=attention_mask))

    @torch.no_grad()
    def calibration_forward(self, input_ids: torch.Tensor, *, head: bool = False) -> None:
        """One forward pass for the input statistics of the linears (hooks see it); the
        head runs, in chunks of positions, only when `head`."""
        hidden = self.hidden_at(input_ids)
        if head:
            flat = hidden.reshape(-1, hidden.shape[-1])
            for rows in head_chunks(flat.shape[0], self.head.out_features):
                self.head(flat[rows])

    @abstractmethod
    def loss(self, input_ids: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """The family's training loss on a batch of token ids (scalar, differentiable)."""

    @abstractmethod
    def generate(self, prompts: Sequence[PromptLike], options: GenerationOptions | None = None,
                 **overrides) -> list[str]:
        """Completions of `prompts` (the answer only, cut at stop strings)."""

    def score(self, prompts: Sequence[PromptLike], targets: Sequence[str], *,
              batch_size: int = 8, seed: int = 0, **options) -> ScoreResult:
        """Teacher-forced top-1 accuracy and mean log-prob of `targets` given `prompts`."""
        if len(prompts) != len(targets):
            raise ValueError("prompts and targets differ in length")
        contexts = [self.encode(self.render(p)) for p in prompts]
        encoded = [self.encode(t) for t in targets]
        if empty := [i for i, t in enumerate(encoded) if not t]:
            raise ValueError(f"targets {empty} are empty")
        return self.score_tokens(contexts, encoded, batch_size=batch_size, seed=seed, **options)

    @abstractmethod
    def score_tokens(self, contexts: list[list[int]], targets: list[list[int]], *,
                     batch_size: int = 8, seed: int = 0, topk: int = 0,
                     reference: TopK | None = None, **options) -> ScoreResult:
        """`score` on token ids (callers that score the same texts often encode once).

        `topk` > 0 also returns the model's top-k distributions at every scored position
        (`ScoreResult.topk`); `reference`, such a `TopK` from a call on the same inputs and
        settings (e.g. by the 16-bit weights), also returns the mean KL(reference || model)
        per target token of each sample (`ScoreResult.kl`)."""


def resolve_options(options: GenerationOptions | None, overrides: dict) -> GenerationOptions:
    """`options` (or the defaults) with keyword overrides applied."""
    from dataclasses import replace

    base = options or GenerationOptions()
    if "stop" in overrides and overrides["stop"] is not None:
        overrides = {**overrides, "stop": tuple(overrides["stop"])}
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string."""
    cut = len(text)
    for stop in stops:
        if stop and (i := text.find(stop)) >= 0:
            cut = min(cut, i)
    return text[:cut]


@contextmanager
def recomputed_blocks(module: nn.Module) -> Iterator[int]:
    """Inside the `with`, every decoder block (transformers' `GradientCheckpointingLayer`)
    keeps only its input for the backward pass and recomputes the rest (non-reentrant
    `torch.utils.checkpoint`, which double backward goes through too). Yields how many
    blocks it wraps. Works in eval mode, unlike transformers' own switch."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
    for block in blocks:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)
    try:
        yield len(blocks)
    finally:
        for block in blocks:
            del block.forward


HEAD_CHUNK_BYTES = 32 << 20  # float32 logits materialised at once by the chunked head


def head_chunks(n: int, vocab: int) -> list[slice]:
    """Slices of `n` positions whose float32 logits take at most `HEAD_CHUNK_BYTES`."""
    rows = max(1, HEAD_CHUNK_BYTES // (4 * vocab))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (top-1 correct, log-prob of target) for `logits` [N, V], `targets` [N]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    correct = (logits.argmax(dim=-1) == targets).float()
    return correct, logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _tail_logp(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the mass of `logp` [N, V] outside the token ids [N, k] (−inf if none is).

    A sum of the remaining probabilities (no cancellation, unlike 1 − Σ top-k), about twice
    as fast on the CPU as a logsumexp over a copy with the top k set to −inf."""
    probs = logp.exp()
    probs.scatter_(-1, ids, 0.0)
    return probs.sum(dim=-1).log()


def top_k(logp: torch.Tensor, k: int) -> TopK:
    """The k most likely tokens of log-probabilities [N, V] and the tail's mass (on the CPU)."""
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return TopK(values.cpu(), ids.int().cpu(), _tail_logp(logp, ids).cpu())


def topk_kl(reference: TopK, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position [N] between the reference's distributions p, known through
    their top k and the tail bucket, and log-probabilities `logq` [N, V]:
    Σ_{i ∈ top-k(p)} p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail),
    tail = everything outside p's top k. This is the exact KL of the two distributions
    coarsened to k + 1 outcomes: a lower bound on the full KL, equal to it at k = vocab.
    Rounding can leave −1e-9 where p = q; it reads 0."""
    ids = reference.ids.to(logq.device, torch.long)
    logp = reference.logp.to(logq.device)
    tail_p = reference.tail.to(logq.device)
    logq_top, tail_q = logq.gather(-1, ids), _tail_logp(logq, ids)
    top = (logp.exp() * (logp - logq_top)).sum(dim=-1)
    mass = tail_p.exp()
    tail = torch.where(mass > 0, mass * (tail_p - tail_q), torch.zeros_like(mass))
    return (top + tail).clamp_min(0.0)


@dataclass
class TokenStats:
    """Per-position scores of `head_token_stats`."""

    correct: torch.Tensor  # [N] top-1 correct (0/1)
    logprob: torch.Tensor  # [N] log-prob of the target
    kl: torch.Tensor | None = None  # [N] KL(reference || model), when given a reference
    topk: TopK | None = None  # the model's top-k at each position, when asked


@torch.no_grad()
def head_token_stats(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, *,
                     topk: int = 0, reference: TopK | None = None) -> TokenStats:
    """`token_stats` of `head(hidden)` [N, V], one chunk of positions at a time; with
    `topk` > 0 also the top-k distributions (see `TopK`), with a `reference` ([N] rows,
    aligned with `hidden`) also `topk_kl` to it."""
    if reference is not None and len(reference) != hidden.shape[0]:
        raise ValueError(f"the reference has {len(reference)} positions, the scores "
                         f"{hidden.shape[0]}: score the same inputs the same way")
    correct, logprob, kl, tops = [], [], [], []
    for rows in head_chunks(hidden.shape[0], head.out_features):
        logits = head(hidden[rows]).float()
        correct.append((logits.argmax(dim=-1) == targets[rows]).float())
        logp = torch.log_softmax(logits, dim=-1)
        del logits
        logprob.append(logp.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1))
        if topk:
            tops.append(top_k(logp, topk))
        if reference is not None:
            kl.append(topk_kl(reference.rows(rows), logp))
    return TokenStats(torch.cat(correct), torch.cat(logprob),
                      torch.cat(kl) if reference is not None else None,
                      TopK.cat(tops) if topk else None)


def _weighted_ce(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(head(hidden).float(), targets, reduction="none") * weights).sum()


def head_cross_entropy(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ weight · cross-entropy(head(hidden), target) over [N] positions (weights default
    to 1), one chunk of positions at a time; under autograd each chunk is checkpointed (its
    logits are recomputed in the backward pass, also for double backward)."""
    weights = torch.ones_like(targets, dtype=torch.float32) if weights is None else weights
    total = hidden.new_zeros((), dtype=torch.float32)
    for rows in head_chunks(hidden.shape[0], head.out_features):
        args = (head, hidden[rows], targets[rows], weights[rows])
        total = total + (checkpoint(_weighted_ce, *args, use_reentrant=False)
                         if torch.is_grad_enabled() else _weighted_ce(*args))
    return total


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to one tensor; returns (ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def batches(n: int, size: int, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Index batches of at most `size`; grouped by length (longest first) when given."""
    order = sorted(range(n), key=lambda i: -lengths[i]) if lengths is not None else list(range(n))
    return [order[i : i + size] for i in range(0, n, size)]
