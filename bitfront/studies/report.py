"""The study report: `report.md` for people, `report.json` for programs, PNG plots.

It holds both families' fronts on the same axes (retention vs memory, vs latency, vs average
bits), per-layer sensitivity heatmaps, the bit allocation of the chosen plans, the uniform
table, hypervolume per model, proxy fidelity, the frontier comparison, and a plain-language
finding. Built from the stages' stored outputs only.
"""

from __future__ import annotations

import json
from pathlib import Path

import bitfront
from bitfront.objectives.fidelity import correlations
from bitfront.search.front import hypervolume
from bitfront.studies import plots
from bitfront.studies.compare import RunFront, _run, best_at, common_reference, compare_runs
from bitfront.studies.spec import StudySpec
from bitfront.units import format_bytes, parse_bytes

SCHEMA = 1
FAMILY_WORDS = {"diffusion": "the diffusion model", "ar": "the autoregressive model"}


def _front_of(result: dict) -> RunFront:
    search = result["search"]
    return _run(result["label"], result["model"]["family"], search["config"],
                search["points"])


def _mean_pass(row: dict) -> float:
    values = list(row["pass@1"].values())
    return sum(values) / len(values) if values else 0.0


def _fidelity(result: dict) -> dict:
    rows = result["uniform"] + result["verified"]
    tau, rho, note = correlations([r["retention"] for r in rows], [_mean_pass(r) for r in rows])
    return {"plans": len(rows), "kendall_tau": tau, "spearman_rho": rho, "note": note}


def _budgets(spec: StudySpec, results: list[dict]) -> list[int]:
    """The spec's budgets, else where quantization starts to bite: the uniform 3-bit size
    and halfway from there down to the uniform 2-bit size (the larger model's)."""
    if spec.report.budgets:
        return [parse_bytes(b) for b in spec.report.budgets]

    def size(bits: int) -> int | None:
        sizes = [u["memory_bytes"] for res in results for u in res["uniform"] if u["bits"] == bits]
        return int(max(sizes)) if sizes else None

    three, two = size(3), size(2)
    if three is None:
        return [b for b in (size(4),) if b is not None]
    return [three] + ([(three + two) // 2] if two is not None else [])


def finding(results: list[dict], fronts: list[RunFront], budget: int) -> str:
    parts = []
    for result, front in zip(results, fronts, strict=True):
        family = result["model"]["family"]
        who = f"{FAMILY_WORDS.get(family, family)} ({result['model']['name']})"
        value = best_at(front, budget)
        if value is None:
            kept = "has no plan that fits"
        elif value >= 1:
            kept = f"keeps all of its accuracy ({value:.1%} of the 16-bit proxy score)"
        else:
            kept = f"keeps {value:.1%} of its accuracy"
        parts.append(f"{who} {kept}")
    head, *rest = parts
    tail = "; ".join(rest)
    return (f"At ≤ {format_bytes(budget)} of weights, {head}" + (f", {tail}" if tail else "")
            + " (proxy retention of the best plan found under that budget).")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _latency(row: dict) -> str:
    return f"{row['latency_s']:.4g}" if "latency_s" in row else "-"


def write_report(spec: StudySpec, run_dir: Path, results: list[dict]) -> Path:
    fronts = [_front_of(r) for r in results]
    budgets = _budgets(spec, results)
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    figures = {
        "fronts_memory": plots.fronts(fronts, "memory_bytes", plot_dir / "fronts_memory.png",
                                      "accuracy retention vs memory"),
        "fronts_bits": plots.fronts(fronts, "avg_bits", plot_dir / "fronts_bits.png",
                                    "accuracy retention vs average bits"),
        "uniform": plots.uniform({r["label"]: r["uniform"] for r in results},
                                 plot_dir / "uniform.png"),
    }
    if all("latency" in f.objectives for f in fronts):
        figures["fronts_latency"] = plots.fronts(fronts, "latency_s",
                                                 plot_dir / "fronts_latency.png",
                                                 "accuracy retention vs latency")
    low = min(spec.quantizer.bits)
    sens_panels = [(r["label"], {row["layer"]: row["omega"] for row in
                                 r["sensitivity"].get("rows", []) if row["bits"] == low})
                   for r in results if r["sensitivity"]]
    if sens_panels:
        figures["sensitivity"] = plots.heatmaps(
            sens_panels, plot_dir / "sensitivity.png",
            f"HAWQ sensitivity Ω at {low} bits (log10)", colorbar="log10 Ω", log=True)
    chosen = []
    for r in results:
        by_trial = {p["trial"]: p for p in r["search"]["points"]}
        knee = r["search"]["knee"]
        if knee is None:
            continue
        groups = r["search"]["config"]["groups"]
        bits = {name: by_trial[knee]["bits"][g] for g, members in groups.items()
                for name in members}
        chosen.append((f"{r['label']}: knee (trial {knee})", bits))
    if chosen:
        figures["allocation"] = plots.heatmaps(chosen, plot_dir / "allocation.png",
                                               "bits per layer of the chosen plans",
                                               colorbar="bits",
                                               levels=sorted(spec.search.choices))
    comparison = (compare_runs(fronts[0], fronts[1], budgets) if len(fronts) == 2 else None)
    common = common_reference(fronts)
    models = {}
    for r, front in zip(results, fronts, strict=True):
        models[r["label"]] = {
            "model": r["model"], "uniform": r["uniform"], "verified": r["verified"],
            "hypervolume": r["search"]["hypervolume"],
            "hypervolume_common_reference": hypervolume(front.as_points(), front.objectives,
                                                        common),
            "knee": r["search"]["knee"], "front": r["search"]["front"],
            "trials": len(r["search"]["points"]), "fidelity": _fidelity(r),
            "exports": r["exports"],
        }
    sentences = [finding(results, fronts, b) for b in budgets]
    report = {"schema": SCHEMA, "study": spec.name, "bitfront": bitfront.__version__,
              "spec": spec.to_dict(), "models": models, "comparison": comparison,
              "common_reference": common, "budgets": budgets, "findings": sentences,
              "plots": {k: str(v.relative_to(run_dir)) for k, v in figures.items()}}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (run_dir / "report.md").write_text(_markdown(spec, results, report) + "\n")
    return run_dir / "report.md"


def _markdown(spec: StudySpec, results: list[dict], report: dict) -> str:
    benches = spec.evaluation.benches
    out = [f"# Study `{spec.name}`", "", spec.description, ""]
    out += ["## Finding", ""] + [f"- {s}" for s in report["findings"]] + [""]
    out += ["## Models", "", _table(
        ["label", "model", "family", "parameters", "16-bit weights", "quantizable layers"],
        [[r["label"], r["model"]["name"], r["model"]["family"],
          f"{r['model']['parameters']:,}",
          format_bytes(next(u["memory_bytes"] for u in r["uniform"] if u["bits"] == 16))
          if any(u["bits"] == 16 for u in r["uniform"]) else "-",
          str(r["model"]["quantizable_layers"])] for r in results]), ""]
    ev = spec.evaluation
    decoding = ("greedy" if ev.temperature == 0 else
                f"sampled at temperature {ev.temperature:g}, top-p {ev.top_p:g}")
    out += ["## Uniform bitwidths", "",
            f"Every quantizable layer at the same bitwidth (GPTQ, group size "
            f"{spec.quantizer.group_size}); pass@1 on the first {ev.limit or 'all'} tasks of "
            f"each benchmark, {decoding}.", ""]
    rows = []
    for r in results:
        for u in sorted(r["uniform"], key=lambda u: -u["bits"]):
            rows.append([r["label"], str(u["bits"]), format_bytes(u["memory_bytes"]),
                         f"{u['avg_bits']:.2f}", _latency(u), f"{u['retention']:.4f}",
                         f"{u['logprob_retention']:.4f}",
                         *(f"{u['pass@1'][b]:.1%}" for b in benches)])
    out += [_table(["model", "bits", "memory", "bits/weight", "latency s", "proxy retention",
                    "likelihood retention", *(f"{b} pass@1" for b in benches)], rows), ""]
    out += ["![uniform](plots/uniform.png)", ""]
    out += ["## Fronts", "",
            "Hypervolume in normalised units (1 = full accuracy at no cost) against the "
            "reference point retention 0, the all-16-bit memory and the slowest plan's "
            f"latency; `common` uses one reference for all models "
            f"(memory {format_bytes(report['common_reference']['memory'])}"
            + (f", latency {report['common_reference']['latency']:.4g} s"
               if report["common_reference"]["latency"] else "") + ").", ""]
    rows = []
    for r in results:
        m = report["models"][r["label"]]
        knee = next((p for p in r["search"]["points"] if p["trial"] == m["knee"]), None)
        rows.append([r["label"], str(m["trials"]), str(len(m["front"])),
                     f"{m['hypervolume']:.4f}", f"{m['hypervolume_common_reference']:.4f}",
                     "-" if knee is None else
                     f"trial {knee['trial']}: {knee['retention']:.4f} at "
                     f"{format_bytes(knee['memory_bytes'])}, {knee['avg_bits']:.2f} bits"])
    out += [_table(["model", "trials", "front size", "hypervolume", "hypervolume (common)",
                    "knee"], rows), ""]
    for key, title in (("fronts_memory", "memory"), ("fronts_latency", "latency"),
                       ("fronts_bits", "average bits")):
        if key in report["plots"]:
            out += [f"![retention vs {title}]({report['plots'][key]})", ""]
    out += ["## Verified front", "",
            "Front plans (the knee, then spread by memory) evaluated with full pass@1.", ""]
    rows = [[r["label"], str(v["trial"]), v["origin"], format_bytes(v["memory_bytes"]),
             f"{v['avg_bits']:.2f}", _latency(v), f"{v['retention']:.4f}",
             *(f"{v['pass@1'][b]:.1%}" for b in benches)]
            for r in results for v in r["verified"]]
    out += [_table(["model", "trial", "origin", "memory", "bits/weight", "latency s",
                    "proxy retention", *(f"{b} pass@1" for b in benches)], rows), ""]
    out += ["## Proxy fidelity", "",
            "Kendall τ and Spearman ρ between proxy retention and mean pass@1 over the "
            "uniform and verified plans.", ""]
    rows = []
    for label, m in report["models"].items():
        f = m["fidelity"]
        rows.append([label, str(f["plans"]),
                     "-" if f["kendall_tau"] is None else f"{f['kendall_tau']:.3f}",
                     "-" if f["spearman_rho"] is None else f"{f['spearman_rho']:.3f}",
                     f["note"]])
    out += [_table(["model", "plans", "Kendall τ", "Spearman ρ", "note"], rows), ""]
    if report["comparison"]:
        c = report["comparison"]
        a, b = c["runs"]
        gap = c["retention_gap_memory"]
        out += ["## Frontier comparison", ""]
        if gap["mean_gap"] is not None:
            out += [f"Over the memory range both fronts cover "
                    f"({format_bytes(gap['range'][0])}–{format_bytes(gap['range'][1])}), "
                    f"{a}'s front lies on average {gap['mean_gap']:+.4f} retention above "
                    f"{b}'s (mean absolute gap {gap['mean_abs_gap']:.4f}).", ""]
        rows = [[label, *(("-" if c[label]["best_at"][str(int(bud))] is None else
                           f"{c[label]['best_at'][str(int(bud))]:.4f}")
                          for bud in report["budgets"])] for label in (a, b)]
        out += [_table(["model", *(f"best retention ≤ {format_bytes(bud)}"
                                   for bud in report["budgets"])], rows), ""]
    for key, caption in (("sensitivity", "Per-layer HAWQ sensitivity"),
                         ("allocation", "Bit allocation of the chosen plans")):
        if key in report["plots"]:
            out += [f"## {caption}", "", f"![{key}]({report['plots'][key]})", ""]
    out += ["## Exports", ""]
    for r in results:
        out += [f"- {r['label']}: " + ", ".join(f"`{Path(p).name}`" for p in r["exports"])]
    return "\n".join(out)
