"""Masked-diffusion subjects (CoDA and the pocket diffusion model) behind `CodeLM`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bitfront.models.base import (
    CodeLM,
    GenerationOptions,
    PromptLike,
    ScoreResult,
    TopK,
    batches,
    cut_at_stops,
    head_cross_entropy,
    head_token_stats,
    pad_batch,
    resolve_options,
)
from bitfront.models.coda import CoDANetwork, CoDATokens
from bitfront.models.diffusion_sampling import DiffusionOptions, diffusion_sample

# Mask ratios at which `score()` reconstructs the target, after CoDA's evaluation practice of
# probing several noise levels; each ratio uses its own seeded mask pattern.
SCORE_MASK_RATIOS = (0.25, 0.5, 0.75, 1.0)
# CoDA's training noise floor: t ~ U(eps, 1).
TRAIN_EPS = 1e-3


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def mask_positions(n: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A seeded choice of max(1, round(ratio * n)) of `n` positions."""
    k = min(n, max(1, round(ratio * n)))
    return torch.randperm(n, generator=generator)[:k].sort().values


class DiffusionLM(CodeLM):
    """A CoDA-style masked-diffusion LM: bidirectional, shifted logits, denoising sampler.

    `logits(ids)[:, i]` is the model's prediction for token i (the shift is applied).
    """

    family = "diffusion"

    def __init__(self, name: str, module: CoDANetwork, tokenizer, tokens: CoDATokens, *,
                 diffusion: DiffusionOptions | None = None, use_chat: bool | None = None):
        super().__init__(name, module, tokenizer, use_chat=use_chat)
        self.tokens = tokens
        self.diffusion = diffusion or DiffusionOptions()

    @property
    def pad_token_id(self) -> int:
        return self.tokens.pad

    def stop_token_ids(self) -> list[int]:
        return sorted({self.tokens.eos, self.tokens.pad})

    def hidden_at(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # CoDA attends to everything, padding included: `attention_mask` is ignored by design.
        return self.module.hidden(input_ids.to(self.device),
                                  None if positions is None else positions.to(self.device))

    def logits_at(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Shifted logits only at the positions of the bool mask [B, L]: [N, V]."""
        return self.module(input_ids.to(self.device), positions.to(self.device))

    def noisy_batch(self, input_ids: torch.Tensor, generator: torch.Generator,
                    maskable: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CoDA's forward process: t ~ U(eps, 1) per row, each token masked with prob. t.

        Only positions of the bool mask `maskable` [B, L] may be masked (default: all);
        position 0 never is (its own output predicts it after the shift).
        Returns (noisy ids, mask [B, L] bool, t [B]).
        """
        batch, length = input_ids.shape
        t = TRAIN_EPS + (1 - TRAIN_EPS) * torch.rand(batch, generator=generator)
        masked = torch.rand(batch, length, generator=generator) < t[:, None]
        if maskable is not None:
            masked &= maskable
        masked[:, 0] = False
        noisy = input_ids.masked_fill(masked.to(input_ids.device), self.tokens.mask)
        return noisy, masked, t

    def loss(self, input_ids: torch.Tensor, *, seed: int = 0,
             maskable: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-token cross-entropy weighted by 1/t, summed over masked tokens and divided
        by the batch's token count (CoDA/LLaDA recipe). `seed` fixes the masking;
        `maskable` limits it (see `noisy_batch`)."""
        input_ids = input_ids.to(self.device)
        noisy, masked, t = self.noisy_batch(input_ids.cpu(), seeded_generator(seed), maskable)
        masked, t = masked.to(self.device), t.to(self.device)
        weights = (1.0 / t)[:, None].expand_as(masked)[masked]
        hidden = self.hidden_at(noisy, masked)
        return head_cross_entropy(self.head, hidden, input_ids[masked], weights) / \
            input_ids.numel()

    @torch.no_grad()
    def generate(self, prompts: Sequence[PromptLike], options: GenerationOptions | None = None,
                 diffusion: DiffusionOptions | None = None, **overrides) -> list[str]:
        """Denoise `max_new_tokens` masks after each prompt (left-padded with pad tokens).

        The answer is cut at the first end-of-turn / end-of-text token, then at stop strings.
        """
        opt = resolve_options(options, overrides)
        dopt = diffusion or self.diffusion
        encoded = [self.encode(self.render(p)) for p in prompts]
        stops = set(self.stop_token_ids())
        generator = seeded_generator(opt.seed, self.device)
        out: list[str] = [""] * len(encoded)
        for idx in batches(len(encoded), opt.batch_size, [len(e) for e in encoded]):
            ids, _ = pad_batch([encoded[i] for i in idx], self.tokens.pad, side="left")
            filled = diffusion_sample(
                self.logits_at, ids.to(self.device), max_new_tokens=opt.max_new_tokens,
                mask_id=self.tokens.mask, opts=dopt, temperature=opt.temperature,
                top_p=opt.top_p, top_k=opt.top_k, generator=generator,
            )
            for row, i in enumerate(idx):
                answer = filled[row, ids.shape[1]:].tolist()
                end = next((j for j, tok in enumerate(answer) if tok in stops), len(answer))
                text = self.tokenizer.decode(answer[:end], skip_special_tokens=True)
                out[i] = cut_at_stops(text, opt.stop)
        return out

    @torch.no_grad()
    def score_tokens(self, contexts: list[list[int]], targets: list[list[int]], *,
                     batch_size: int = 8, seed: int = 0, topk: int = 0,
                     reference: TopK | None = None,
                     mask_ratios: Sequence[float] = SCORE_MASK_RATIOS) -> ScoreResult:
        """Masked reconstruction of each target given its context, at seeded mask ratios.

        For every sample and ratio r a seeded set of round(r * n) target positions is masked;
        accuracy / log-prob (and the KL to a reference's masked-token distributions, see
        `CodeLM`: the masks are the same for the same seed) are averaged over all masked
        positions of all ratios.
        """
        rows: list[tuple[int, list[int], torch.Tensor]] = []  # (sample, ids, masked positions)
        for i, (ctx, tgt) in enumerate(zip(contexts, targets, strict=True)):
            gen = seeded_generator(seed * 1_000_003 + i)
            for ratio in mask_ratios:
                rows.append((i, ctx + tgt, mask_positions(len(tgt), ratio, gen) + len(ctx)))
        correct = [0.0] * len(contexts)
        logprob = [0.0] * len(contexts)
        kl = [0.0] * len(contexts)
        count = [0] * len(contexts)
        tops, cursor = [], 0
        for idx in batches(len(rows), batch_size, [len(r[1]) for r in rows]):
            ids, _ = pad_batch([rows[j][1] for j in idx], self.tokens.pad, side="right")
            masked = torch.zeros_like(ids, dtype=torch.bool)
            for row, j in enumerate(idx):
                masked[row, rows[j][2]] = True
            n = int(masked.sum())
            part = None if reference is None else reference.rows(slice(cursor, cursor + n))
            cursor += n
            hidden = self.hidden_at(ids.masked_fill(masked, self.tokens.mask), masked)
            got = head_token_stats(self.head, hidden, ids[masked].to(self.device), topk=topk,
                                   reference=part)
            if got.topk is not None:
                tops.append(got.topk)
            # Row-major order: each row's masked positions are contiguous, in `idx` order.
            start = 0
            for j in idx:
                sample, _, pos = rows[j]
                end = start + len(pos)
                correct[sample] += got.correct[start:end].sum().item()
                logprob[sample] += got.logprob[start:end].sum().item()
                if got.kl is not None:
                    kl[sample] += got.kl[start:end].sum().item()
                count[sample] += len(pos)
                start = end
        if reference is not None and cursor != len(reference):
            raise ValueError(f"the reference has {len(reference)} positions, the scores "
                             f"{cursor}: score the same inputs the same way")
        return ScoreResult(
            accuracy=[c / n for c, n in zip(correct, count, strict=True)],
            logprob=[lp / n for lp, n in zip(logprob, count, strict=True)],
            kl=None if reference is None else [d / n for d, n in zip(kl, count, strict=True)],
            topk=TopK.cat(tops) if topk else None,
        )
