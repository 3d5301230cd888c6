"""The calibration set: seeded windows of code for Hessian capture and HAWQ traces.

Text: MBPP train tasks and standard-library code (evaluators/corpus.py), tokenized with the
subject's tokenizer into one stream, from which `n_samples` windows of `seq_len` tokens are
drawn with a seed. For diffusion subjects the windows are masked as the model sees them at
inference (CoDA's forward process, seeded), unless `mask_aware` is off.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from bitfront.data.corpus import build_corpus
from bitfront.models.base import CodeLM

# Enough stdlib text for a few hundred windows; the full corpus is not needed here.
_STDLIB_CHARS = 2_000_000


@dataclass(frozen=True)
class CalibrationConfig:
    n_samples: int = 64
    seq_len: int = 256
    batch_size: int = 8
    seed: int = 0
    mask_aware: bool = True
    mbpp: str = ""  # MBPP source for the train tasks; empty: $BITFRONT_MBPP or the vendored copy

    def to_dict(self) -> dict:
        return asdict(self)


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


def calibration_set(lm: CodeLM, config: CalibrationConfig | None = None) -> Calibration:
    config = config or CalibrationConfig()
    corpus = build_corpus(seed=config.seed, max_stdlib_chars=_STDLIB_CHARS, mbpp_repeats=1,
                          mbpp_source=config.mbpp or None)
    pad = lm.pad_token_id
    stream: list[int] = []
    for ids in lm.tokenizer(corpus.train, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(pad)
    tokens = torch.tensor(stream, dtype=torch.long)
    generator = torch.Generator().manual_seed(config.seed)
    starts = torch.randint(0, len(tokens) - config.seq_len, (config.n_samples,),
                           generator=generator)
    windows = torch.stack([tokens[s : s + config.seq_len] for s in starts.tolist()])
    clean = list(windows.split(config.batch_size))
    if lm.family == "diffusion" and config.mask_aware:
        batches = [lm.noisy_batch(b, generator)[0] for b in clean]
    else:
        batches = clean
    return Calibration(config=config, batches=batches, clean=clean)
