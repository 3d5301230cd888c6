"""The study report: `report.md` for people, `report.json` for programs, PNG plots.

It holds both families' fronts on the same axes (retention vs memory, vs latency, vs average
bits; each model's latency from the backend that timed it, named per model), per-layer
sensitivity heatmaps, the bit allocation of the chosen plans, the uniform
table, hypervolume per model, proxy fidelity, the frontier comparison, and a plain-language
finding. Built from the stages' stored outputs only.
"""

from __future__ import annotations

import json
from pathlib import Path

import bitfront
from bitfront.objectives.fidelity import PROXIES, correlations
from bitfront.planner.front import hypervolume
from bitfront.stats import Interval
from bitfront.studies import plots
from bitfront.studies.compare import RunFront, _run, common_reference, compare_runs
from bitfront.studies.spec import StudySpec
from bitfront.units import format_bytes

SCHEMA = 1
FAMILY_WORDS = {"diffusion": "the diffusion model", "ar": "the autoregressive model"}


def _front_of(result: dict) -> RunFront:
    search = result["search"]
    return _run(result["label"], result["model"]["family"], search["config"],
                search["points"])


def _fidelity(result: dict, bench: str) -> dict:
    """τ and ρ (with intervals) between each proxy's retention (`PROXIES`: top-1,
    likelihood, KL) and pass@1 on `bench` over the uniform, verified and mixed plans; the
    top-level τ and ρ are top-1 retention's. A proxy some stored row lacks (recorded before
    it existed) is left out."""
    rows = result["uniform"] + result["verified"] + result.get("mixed", [])
    truth = [r["pass@1"][bench] for r in rows]
    proxies = {}
    for name, (_, key) in PROXIES.items():
        values = [r.get(key) for r in rows]
        if any(v is None for v in values):
            continue
        tau, rho, note = correlations(values, truth)
        proxies[name] = {"kendall_tau": tau and tau.to_dict(),
                         "spearman_rho": rho and rho.to_dict(), "note": note}
    top1 = proxies["top1"]
    return {"plans": len(rows), "bench": bench, **top1, "proxies": proxies}


def no_measurable_loss(low: float | None, high: float | None) -> bool:
    """A retention whose 95% interval holds 1.0 (a value above 1.0 inside the noise is not a
    gain)."""
    return low is not None and high is not None and low <= 1.0 <= high


def _ci_text(low: float, high: float) -> str:
    return f"95% CI {low:.1%}–{high:.1%}"


def retention_text(row: dict) -> str:
    """A proxy retention with its interval, or "no measurable loss" (see above)."""
    value, low, high = row["retention"], row.get("retention_low"), row.get("retention_high")
    if low is None or high is None:
        return f"{value:.1%}"
    if no_measurable_loss(low, high):
        return f"no measurable loss ({value:.1%}, {_ci_text(low, high)})"
    return f"{value:.1%} ({_ci_text(low, high)})"


def _pass_text(row: dict, bench: str) -> str:
    low, high = row.get("pass@1_interval", {}).get(bench, (None, None))
    value = row["pass@1"][bench]
    return f"{value:.1%}" if low is None else f"{value:.1%} [{low:.1%}, {high:.1%}]"


def _interval_text(data: dict | None) -> str:
    return "-" if data is None else str(Interval.from_dict(data))


def _pass_interval(row: dict, bench: str) -> tuple[float, float | None, float | None]:
    low, high = row.get("pass@1_interval", {}).get(bench, (None, None))
    return row["pass@1"][bench], low, high


def finding(results: list[dict], budget: int, bench: str) -> str:
    """At `budget`: each model's best plan (refined there) with its pass@1 on `bench` beside
    the uniform plan that fits, and whether the two models' pass@1 differ outside the noise
    (the proxy is lenient at low bits, so pass@1 decides)."""
    parts, intervals = [], []
    for result in results:
        family = result["model"]["family"]
        who = f"{FAMILY_WORDS.get(family, family)} ({result['model']['name']})"
        row = next((a for a in result.get("answers", []) if a["budget"] == budget), None)
        if row is None or row.get("mixed") is None:
            parts.append(f"{who} has no plan that fits")
            continue
        m = row["mixed"]
        value, low, high = _pass_interval(m, bench)
        text = (f"{who} reaches {bench} pass@1 {value:.1%}"
                + (f" [{low:.1%}, {high:.1%}]" if low is not None else "")
                + f" with its best plan ({m['avg_bits']:.2f} bits/weight, proxy retention "
                f"{retention_text(m)})")
        if u := row.get("uniform"):
            text += f" against {_pass_text(u, bench)} for uniform {u['bits']}-bit"
        parts.append(text)
        intervals.append((low, high))
    sentence = f"At ≤ {format_bytes(budget)} of weights, " + "; ".join(parts) + "."
    if len(intervals) == 2 and None not in (*intervals[0], *intervals[1]):
        (la, ha), (lb, hb) = intervals
        sentence += (" The pass@1 difference between the two lies outside the noise (the 95% "
                     "intervals do not overlap)." if ha < lb or hb < la else
                     " The pass@1 difference between the two is inside the noise (the 95% "
                     "intervals overlap): no finding at this budget.")
    return sentence


def _equal_memory_rows(results: list[dict], bench: str) -> list[list[str]]:
    """Mixed vs uniform at equal memory: per budget and model, the uniform plan that fits and
    the best plan refined at the budget."""
    rows = []
    for result in results:
        for answer in result.get("answers", []):
            budget = format_bytes(answer["budget"])
            for kind, row in (("uniform", answer.get("uniform")), ("mixed", answer.get("mixed"))):
                if row is None:
                    continue
                plan = (f"uniform {row['bits']}-bit" if kind == "uniform" else
                        f"trial {row['trial']} ({row['origin']})")
                rows.append([budget, result["label"], plan, format_bytes(row["memory_bytes"]),
                             f"{row['avg_bits']:.2f}", retention_text(row),
                             _pass_text(row, bench)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _latency(row: dict) -> str:
    return f"{row['latency_s']:.4g}" if "latency_s" in row else "-"


LATENCY_BACKENDS = {"torch": "bitfront's torch kernels", "llama.cpp": "llama.cpp's CPU kernels"}


def latency_note(results: list[dict]) -> str:
    """Which backend timed each model's latencies, and whether they compare across models."""
    backends = {r["label"]: r["search"].get("latency_backend") for r in results}
    known = {label: b for label, b in backends.items() if b is not None}
    if not known:
        return ""
    text = "Latency per generated sample, timed by " + "; ".join(
        f"{label}: {LATENCY_BACKENDS.get(b, b)}" for label, b in known.items()) + "."
    if len(set(known.values())) > 1:
        text += (" The backends differ, so latencies compare within a model, not across "
                 "models (nor the common hypervolume's latency axis).")
    return text


def write_report(spec: StudySpec, run_dir: Path, results: list[dict], budgets: list[int]
                 ) -> Path:
    fronts = [_front_of(r) for r in results]
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
            "trials": len(r["search"]["points"]),
            "latency_backend": r["search"].get("latency_backend"),
            "fidelity": _fidelity(r, spec.verify.benches[0]),
            "exports": r["exports"], "answers": r["answers"],
        }
    sentences = [finding(results, b, spec.verify.benches[0]) for b in budgets]
    report = {"schema": SCHEMA, "study": spec.name, "bitfront": bitfront.__version__,
              "spec": spec.to_dict(), "models": models, "comparison": comparison,
              "common_reference": common, "budgets": budgets, "findings": sentences,
              "plots": {k: str(v.relative_to(run_dir)) for k, v in figures.items()}}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (run_dir / "report.md").write_text(_markdown(spec, results, report) + "\n")
    return run_dir / "report.md"


def _markdown(spec: StudySpec, results: list[dict], report: dict) -> str:
    benches = spec.verify.benches
    out = [f"# Study `{spec.name}`", "", spec.description, ""]
    out += ["## Finding", ""] + [f"- {s}" for s in report["findings"]] + [""]
    out += ["## Models", "", _table(
        ["label", "model", "family", "parameters", "16-bit weights", "quantizable layers",
         "latency backend"],
        [[r["label"], r["model"]["name"], r["model"]["family"],
          f"{r['model']['parameters']:,}",
          format_bytes(next(u["memory_bytes"] for u in r["uniform"] if u["bits"] == 16))
          if any(u["bits"] == 16 for u in r["uniform"]) else "-",
          str(r["model"]["quantizable_layers"]),
          r["search"].get("latency_backend") or "-"] for r in results]), ""]
    if note := latency_note(results):
        out += [note, ""]
    ev = spec.evaluation
    tasks = ", ".join(f"{b}: first {spec.verify.limits.get(b, ev.limit) or 'all'} tasks"
                      for b in benches)
    decoding = ("greedy" if ev.temperature == 0 else
                f"sampled at temperature {ev.temperature:g}, top-p {ev.top_p:g}")
    out += ["## Uniform bitwidths", "",
            f"Every quantizable layer at the same bitwidth (GPTQ, group size "
            f"{spec.quantizer.group_size}); pass@1 ({tasks}), {decoding}, with 95% bootstrap "
            "intervals over the tasks; a proxy retention whose interval holds 1.0 is no "
            "measurable loss.", ""]
    rows = []
    for r in results:
        for u in sorted(r["uniform"], key=lambda u: -u["bits"]):
            rows.append([r["label"], str(u["bits"]), format_bytes(u["memory_bytes"]),
                         f"{u['avg_bits']:.2f}", _latency(u), retention_text(u),
                         f"{u['logprob_retention']:.4f}",
                         *(_pass_text(u, b) for b in benches)])
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
    for r in results:
        if requeued := r["search"].get("requeued_seeds"):
            out += [f"The {r['label']} search was resumed after a worker died during its seed "
                    "trials: " + ", ".join(f"{q['origin']} ran again after "
                                           f"{q['after_completed']} completed trials"
                                           for q in requeued)
                    + "; its front can differ from an uninterrupted run's.", ""]
        if unfinished := r["search"].get("unfinished_trials"):
            out += [f"The {r['label']} search was resumed: trial(s) "
                    f"{', '.join(map(str, unfinished))} did not finish (a killed worker's, or "
                    "failed) and are not part of it; the trials after them carry numbers "
                    "shifted against an uninterrupted run's.", ""]
    for key, title in (("fronts_memory", "memory"), ("fronts_latency", "latency"),
                       ("fronts_bits", "average bits")):
        if key in report["plots"]:
            out += [f"![retention vs {title}]({report['plots'][key]})", ""]
    bench, limit = benches[0], spec.verify.equal_memory_limit
    out += ["## Mixed vs uniform at equal memory", "",
            "At each report budget, the largest uniform plan that fits and the best plan "
            "bitfront answers with (the ILP at the budget refined by a local search that keeps "
            f"within it), with {bench} pass@1 on "
            + (f"its first {limit} test tasks" if limit else "all its test tasks")
            + " and 95% bootstrap intervals over the tasks. The proxy is lenient at low bits: "
            "the pass@1 column decides.", ""]
    out += [_table(["budget", "model", "plan", "memory", "bits/weight", "proxy retention",
                    f"{bench} pass@1"], _equal_memory_rows(results, bench)), ""]
    out += ["## Verified front", "",
            "Front plans (the knee, then spread by memory) evaluated with full pass@1.", ""]
    rows = [[r["label"], str(v["trial"]), v["origin"], format_bytes(v["memory_bytes"]),
             f"{v['avg_bits']:.2f}", _latency(v), retention_text(v),
             *(_pass_text(v, b) for b in benches)]
            for r in results for v in r["verified"]]
    out += [_table(["model", "trial", "origin", "memory", "bits/weight", "latency s",
                    "proxy retention", *(f"{b} pass@1" for b in benches)], rows), ""]
    out += ["## Proxy fidelity", "",
            f"Kendall τ and Spearman ρ between each proxy's retention (top-1 accuracy, "
            f"likelihood, KL to the 16-bit distributions) and {benches[0]} pass@1 over "
            "the uniform, verified and random mixed plans, with 95% bootstrap intervals over "
            "the plans.", ""]
    rows = [[label, proxy, str(m["fidelity"]["plans"]), _interval_text(c["kendall_tau"]),
             _interval_text(c["spearman_rho"]), c["note"]]
            for label, m in report["models"].items()
            for proxy, c in m["fidelity"].get("proxies", {"top1": m["fidelity"]}).items()]
    out += [_table(["model", "proxy", "plans", "Kendall τ", "Spearman ρ", "note"], rows), ""]
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
