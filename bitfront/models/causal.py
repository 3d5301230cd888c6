"""Autoregressive subjects: any Hugging Face causal LM (Qwen3, Llama, ..., GGUF) as a `CodeLM`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteriaList, StopStringCriteria

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


class CausalLM(CodeLM):
    """A causal LM: `logits(ids)[:, i]` predicts token i + 1."""

    family = "ar"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stop_tables: dict[tuple[str, ...], StoppingCriteriaList] = {}

    def hidden_at(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        hidden = self.module.get_decoder()(input_ids=input_ids.to(self.device),
                                           attention_mask=attention_mask,
                                           use_cache=False).last_hidden_state
        return hidden if positions is None else hidden[positions.to(self.device)]

    def loss(self, input_ids: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Next-token cross-entropy (deterministic: `seed` is unused)."""
        input_ids = input_ids.to(self.device)
        predicting = torch.ones_like(input_ids, dtype=torch.bool)
        predicting[:, -1] = False
        targets = input_ids[:, 1:].reshape(-1)
        hidden = self.hidden_at(input_ids, predicting)
        return head_cross_entropy(self.head, hidden, targets) / targets.numel()

    @torch.no_grad()
    def generate(self, prompts: Sequence[PromptLike], options: GenerationOptions | None = None,
                 **overrides) -> list[str]:
        """Greedy or sampled decoding, batched with left padding, cut at stop strings."""
        opt = resolve_options(options, overrides)
        texts = [self.render(p) for p in prompts]
        sampling = (
            {"do_sample": True, "temperature": opt.temperature, "top_p": opt.top_p,
             "top_k": opt.top_k or 0}
            if opt.temperature > 0 else {"do_sample": False, "temperature": None,
                                         "top_p": None, "top_k": None}
        )
        out: list[str] = [""] * len(texts)
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(opt.seed)
            encoded = [self.encode(t) for t in texts]
            stops = self._stop_criteria(tuple(opt.stop)) if opt.stop else None
            for idx in batches(len(texts), opt.batch_size, [len(e) for e in encoded]):
                ids, mask = pad_batch([encoded[i] for i in idx], self.pad_token_id, side="left")
                generated = self.module.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    max_new_tokens=opt.max_new_tokens, pad_token_id=self.pad_token_id,
                    use_cache=True,  # whatever the config says (the pocket's is off)
                    eos_token_id=self.stop_token_ids(), stopping_criteria=stops,
                    **sampling,
                )
                for row, i in enumerate(idx):
                    answer = generated[row, ids.shape[1]:]
                    text = self.tokenizer.decode(answer, skip_special_tokens=True)
                    out[i] = cut_at_stops(text, opt.stop)
        return out

    @torch.no_grad()
    def score_tokens(self, contexts: list[list[int]], targets: list[list[int]], *,
                     batch_size: int = 8, seed: int = 0, topk: int = 0,
                     reference: TopK | None = None) -> ScoreResult:
        """Next-token top-1 accuracy and mean log-prob of each target after its context
        (and the top-k / KL to a reference's next-token distributions: see `CodeLM`)."""
        seqs = [c + t for c, t in zip(contexts, targets, strict=True)]
        accuracy, logprob = [0.0] * len(seqs), [0.0] * len(seqs)
        kl = [0.0] * len(seqs)
        tops, cursor = [], 0
        for idx in batches(len(seqs), batch_size, [len(s) for s in seqs]):
            ids, mask = pad_batch([seqs[i] for i in idx], self.pad_token_id, side="right")
            predicting = torch.zeros_like(ids, dtype=torch.bool)
            for row, i in enumerate(idx):
                # Without a context the first target token has no prediction: skip it.
                predicting[row, max(len(contexts[i]), 1) - 1:len(seqs[i]) - 1] = True
            wanted = ids[:, 1:][predicting[:, :-1]]
            n = int(predicting.sum())
            part = None if reference is None else reference.rows(slice(cursor, cursor + n))
            cursor += n
            got = head_token_stats(self.head, self.hidden_at(ids, predicting, mask),
                                   wanted.to(self.device), topk=topk, reference=part)
            if got.topk is not None:
                tops.append(got.topk)
            # Row-major order: each row's positions are contiguous, in `idx` order.
            counts = predicting.sum(dim=1).tolist()
            row_kl = got.kl.split(counts) if got.kl is not None else [None] * len(idx)
            for i, row_ok, row_lp, one_kl in zip(idx, got.correct.split(counts),
                                                 got.logprob.split(counts), row_kl,
                                                 strict=True):
                accuracy[i], logprob[i] = row_ok.mean().item(), row_lp.mean().item()
                if one_kl is not None:
                    kl[i] = one_kl.mean().item()
        if reference is not None and cursor != len(reference):
            raise ValueError(f"the reference has {len(reference)} positions, the scores "
                             f"{cursor}: score the same inputs the same way")
        return ScoreResult(accuracy=accuracy, logprob=logprob,
                           kl=None if reference is None else kl,
                           topk=TopK.cat(tops) if topk else None)

    def _stop_criteria(self, stops: tuple[str, ...]) -> StoppingCriteriaList:
        """Stop-string criteria built once per model and stop set: `generate(stop_strings=)`
        rebuilds its vocabulary tables on every call (its own cache misses, because a fast
        tokenizer's `get_vocab()` comes back in a different order each time): 0.25 s per
        batch at a 49k vocabulary. The criteria keep no state between calls."""
        if stops not in self._stop_tables:
            self._stop_tables[stops] = StoppingCriteriaList(
                [StopStringCriteria(self.tokenizer, list(stops))])
        return self._stop_tables[stops]
