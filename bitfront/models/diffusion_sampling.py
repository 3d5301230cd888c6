"""CoDA's iterative denoising sampler (the Dream-style `_sample` loop of its reference code).

The answer region starts as mask tokens. Over `steps` steps with timesteps
linspace(1, eps, steps + 1), every step runs the full forward pass (shifted logits) and
reveals some masked positions:

- `origin`: each masked position is revealed with probability 1 - s/t;
- `maskgit_plus` (max probability), `topk_margin` (top1 - top2), `entropy` (negative
  entropy): each masked position gets a confidence and int(n_masked * (1 - s/t)) of them are
  revealed (all remaining at the last step), the most confident ones, or drawn from
  softmax(confidence / alg_temp) when alg_temp > 0.

Tokens are drawn with temperature / top-p / top-k (temperature 0 = argmax). All randomness
comes from one `torch.Generator`, so a seed fixes the output. With `block_length` the answer
is decoded block by block, left to right (semi-autoregressive), `steps` split over the blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bitfront.config import Config, setting

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


@dataclass(frozen=True)
class DiffusionOptions(Config):
    """Denoising settings. CoDA's reference evaluation: steps = max_new_tokens = 768,
    temperature 0.1, top_p 0.9, alg entropy."""

    steps: int | None = setting(None, "denoising steps (default: one per new token)")
    alg: str = setting("entropy", "which masked positions each step reveals",
                       choices=ALGORITHMS)
    alg_temp: float = setting(0.0, "temperature of the reveal order (0: most confident)")
    eps: float = setting(1e-3, "final timestep")
    block_length: int | None = setting(None, "semi-autoregressive block length")

    def __post_init__(self):
        self.require(self.alg in ALGORITHMS, "alg", f"one of {ALGORITHMS}")
        self.require(self.steps is None or self.steps > 0, "steps", "a positive number")
        self.require(self.alg_temp >= 0, "alg_temp", "a number ≥ 0")
        self.require(self.block_length is None or self.block_length > 0, "block_length",
                     "a positive number")


def filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Top-p then top-k filtering, as in the reference (`finfo.min` for removed tokens)."""
    floor = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(-1, sorted_idx, remove), floor)
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, floor)
    return logits


def sample_tokens(logits: torch.Tensor, alg: str, *, temperature: float, top_p: float | None,
                  top_k: int | None, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, token) per row of `logits` [N, V] for the given reveal algorithm."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    probs = torch.softmax(filter_logits(logits, top_p, top_k), dim=-1)
    if temperature > 0:
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, tokens = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
    return confidence, tokens


def _step(x: torch.Tensor, logits: torch.Tensor, region: torch.Tensor, t: float, s: float,
          last: bool, opts: DiffusionOptions, sampling: dict, generator: torch.Generator
          ) -> None:
    """One reveal step, in place on `x`, over the masked positions in `region`; `logits`
    holds their rows [N, V] in row-major order."""
    mask_index = region
    mask_logits = logits
    if opts.alg == "origin":
        p_transfer = 1.0 if last else 1 - s / t
        chosen = torch.rand(mask_logits.shape[0], generator=generator,
                            device=x.device) < p_transfer
        fill = torch.full((mask_logits.shape[0],), -1, dtype=torch.long, device=x.device)
        if chosen.any():
            _, fill[chosen] = sample_tokens(mask_logits[chosen], "origin", generator=generator,
                                            **sampling)
        values = x[mask_index]
        values[chosen] = fill[chosen]
        x[mask_index] = values
        return
    confidence, tokens = sample_tokens(mask_logits, opts.alg, generator=generator, **sampling)
    full_conf = torch.full(x.shape, -torch.inf, device=x.device)
    full_conf[mask_index] = confidence
    proposal = x.clone()
    proposal[mask_index] = tokens
    for row in range(x.shape[0]):
        n_masked = int(mask_index[row].sum())
        k = n_masked if last else int(n_masked * (1 - s / t))
        if k <= 0:
            continue
        if opts.alg_temp > 0:
            weights = torch.softmax(full_conf[row] / opts.alg_temp, dim=-1)
            picked = torch.multinomial(weights, k, generator=generator)
        else:
            picked = torch.topk(full_conf[row], k).indices
        x[row, picked] = proposal[row, picked]


@torch.no_grad()
def diffusion_sample(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     prompt_ids: torch.Tensor,
                     *, max_new_tokens: int, mask_id: int, opts: DiffusionOptions,
                     temperature: float = 0.0, top_p: float | None = None,
                     top_k: int | None = None, generator: torch.Generator) -> torch.Tensor:
    """Denoise `max_new_tokens` masks after `prompt_ids` [B, P]; returns [B, P + N] ids.

    `forward(x, positions)` must return CoDA's shifted logits at the positions of the bool
    mask `positions` [B, L], as [N, V] in row-major order (see `CoDANetwork.forward`).
    """
    batch, width = prompt_ids.shape
    x = F.pad(prompt_ids, (0, max_new_tokens), value=mask_id)
    steps = opts.steps or max_new_tokens
    block = opts.block_length or max_new_tokens
    if max_new_tokens % block:
        raise ValueError(f"max_new_tokens {max_new_tokens} is not a multiple of "
                         f"block_length {block}")
    n_blocks = max_new_tokens // block
    if steps % n_blocks:
        raise ValueError(f"steps {steps} is not a multiple of the number of blocks {n_blocks}")
    per_block = steps // n_blocks
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    positions = torch.arange(x.shape[1], device=x.device)
    for b in range(n_blocks):
        lo, hi = width + b * block, width + (b + 1) * block
        in_block = (positions >= lo) & (positions < hi)
        timesteps = torch.linspace(1, opts.eps, per_block + 1).tolist()
        for i in range(per_block):
            region = (x == mask_id) & in_block
            if not region.any():
                continue
            logits = forward(x, region)
            _step(x, logits, region, timesteps[i], timesteps[i + 1], i == per_block - 1,
                  opts, sampling, generator)
    return x
