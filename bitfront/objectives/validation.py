"""Checking the cost models against reality: the latency table's predictions against
end-to-end timing of packed models, and analytic plan memory against the packed tensors."""

from __future__ import annotations

import statistics

import torch

from bitfront.errors import BitfrontError
from bitfront.models.base import CodeLM
from bitfront.objectives.latency import LatencyTable, measure_plan_latency
from bitfront.objectives.memory import measure_memory
from bitfront.progress import track
from bitfront.quant.apply import packed_module
from bitfront.quant.candidates import Candidates
from bitfront.space.memory import plan_memory
from bitfront.space.plan import BitPlan


def validate_costs(lm: CodeLM, candidates: Candidates, table: LatencyTable,
                   plans: list[BitPlan], *, repeats: int = 3, show_progress: bool = True
                   ) -> dict:
    """Predicted vs measured latency and analytic vs measured memory, per plan; with the
    median relative latency error. Latency runs in the table's dtype; memory is measured in
    16 bits, the storage the memory model counts for unquantized tensors. Torch tables only
    (benchmarks/bench_llama_latency.py checks llama.cpp's against llama.cpp)."""
    if table.backend != "torch":
        raise BitfrontError(f"validate_costs times bitfront's torch kernels, not {table.backend}'s")
    latency_dtype = getattr(torch, table.dtype.removeprefix("torch."))
    rows = []
    for plan in track(plans, "validating costs", show=show_progress):
        predicted = table.predict(candidates.space, plan)
        memory = measure_memory(lambda p=plan: packed_module(lm, p, candidates,
                                                             dtype=torch.bfloat16),
                                table.workload, vocab=len(lm.tokenizer), device=lm.device)
        module = packed_module(lm, plan, candidates, dtype=latency_dtype)
        measured = measure_plan_latency(lm, module, table.workload, repeats=repeats)
        analytic = plan_memory(candidates.space, plan)
        rows.append({
            "plan": plan.meta.get("name", ""),
            "avg_bits": analytic.avg_bits,
            "predicted_s": predicted["seconds"],
            "measured_s": measured["seconds"],
            "latency_rel_error": abs(predicted["seconds"] - measured["seconds"])
            / measured["seconds"],
            "analytic_bytes": analytic.total_bytes,
            "parameter_bytes": memory.parameter_bytes,
            "memory_rel_error": abs(memory.parameter_bytes - analytic.total_bytes)
            / analytic.total_bytes,
            "peak_bytes": memory.peak_bytes,
            "peak_how": memory.how,
        })
        del module
    return {"rows": rows,
            "median_latency_rel_error": statistics.median(r["latency_rel_error"] for r in rows),
            "max_memory_rel_error": max(r["memory_rel_error"] for r in rows)}
