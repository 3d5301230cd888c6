"""The `CodeLM` interface: one subject model, autoregressive or masked diffusion.

Everything above `models/` talks to a model only through this class: the torch module,
its tokenizer, its quantizable linears, `generate()` for pass@k and `score()` (teacher-forced
top-1 accuracy and mean log-prob of target tokens) for the fast proxy.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

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
class ScoreResult:
    """Teacher-forced scores of target texts, one entry per sample."""

    accuracy: list[float]  # top-1 token accuracy on the target tokens, in [0, 1]
    logprob: list[float]  # mean log-probability per target token (<= 0)

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracy) / max(len(self.accuracy), 1)

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprob) / max(len(self.logprob), 1)


class CodeLM(ABC):
    """A code language model bitfront can quantize, generate from and score."""

    family: ClassVar[Family]

    def __init__(self, name: str, module: nn.Module, tokenizer, *, use_chat: bool | None = None):
        self.name = name
        self.module = module.eval()
        self.tokenizer = tokenizer
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
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Logits aligned so that `logits[:, i]` predicts token `i + 1` (AR) or token `i`
        (diffusion, after CoDA's shift) — see each family's docstring."""

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
                     batch_size: int = 8, seed: int = 0, **options) -> ScoreResult:
        """`score` on token ids (callers that score the same texts often encode once)."""


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


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (top-1 correct, log-prob of target) for `logits` [N, V], `targets` [N]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    correct = (logits.argmax(dim=-1) == targets).float()
    return correct, logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


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
