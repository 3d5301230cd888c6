"""The calibration set: seeded windows of code for Hessian capture and HAWQ traces.

Text: MBPP train tasks and standard-library code (evaluators/corpus.py), tokenized with the
subject's tokenizer into one stream, from which `samples` windows of `seq_len` tokens are
drawn with a seed. For diffusion subjects the windows are masked as the model sees them at
inference (CoDA's forward process, seeded), unless `mask_aware` is off.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from bitfront.config import Config, setting
from bitfront.data.corpus import build_corpus
from bitfront.models.base import CodeLM

# Enough stdlib text for a few hundred windows; the full corpus is not needed here.
_STDLIB_CHARS = 2_000_000


@dataclass(frozen=True)
class CalibrationConfig(Config):
    samples: int = setting(64, "calibration windows")
    seq_len: int = setting(256, "tokens per calibration window")
    batch_size: int = setting(8, "windows per forward pass")
    seed: int = setting(0, "seed of the window draw (and of the masks, for diffusion)")
    mask_aware: bool = setting(True, "diffusion models: calibrate on masked inputs, as at "
                                     "inference", flag="mask-aware")

    def __post_init__(self):
        for key in ("samples", "seq_len", "batch_size"):
            self.require(getattr(self, key) > 0, key, "a positive number")


@dataclass(frozen=True)
class Calibration:
    """Token batches (already masked for diffusion subjects) and their fingerprint."""

    config: CalibrationConfig
    batches: list[torch.Tensor]  # each [batch, seq_len]
    clean: list[torch.Tensor]  # the same windows before masking

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for batch in self.batches:
            digest.update(batch.numpy().tobytes())
        return digest.hexdigest()[:16]


def calibration_set(lm: CodeLM, config: CalibrationConfig | None = None, *,
                    mbpp_source=None) -> Calibration:
    """The calibration windows of `config` for `lm` (MBPP train tasks from `mbpp_source`:
    see data/mbpp.py)."""
    config = config or CalibrationConfig()
    corpus = build_corpus(seed=config.seed, max_stdlib_chars=_STDLIB_CHARS, mbpp_repeats=1,
                          mbpp_source=mbpp_source)
    pad = lm.pad_token_id
    stream: list[int] = []
    for ids in lm.tokenizer(corpus.train, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(pad)
    tokens = torch.tensor(stream, dtype=torch.long)
    generator = torch.Generator().manual_seed(config.seed)
    starts = torch.randint(0, len(tokens) - config.seq_len, (config.samples,),
                           generator=generator)
    windows = torch.stack([tokens[s : s + config.seq_len] for s in starts.tolist()])
    clean = list(windows.split(config.batch_size))
    if lm.family == "diffusion" and config.mask_aware:
        batches = [lm.noisy_batch(b, generator)[0] for b in clean]
    else:
        batches = clean
    return Calibration(config=config, batches=batches, clean=clean)
