"""The report's figures (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bitfront.studies.compare import RunFront, dearest, staircase  # noqa: E402

KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
AXES = {"memory_bytes": ("weight memory (MiB)", 1 / 2**20),
        "latency_s": ("latency per sample (s)", 1.0),
        "avg_bits": ("average bits per weight", 1.0)}
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red"]


def legend(run: RunFront) -> str:
    """The run's label, with its family unless the label already is the family."""
    return run.label if run.label == run.family or not run.family else f"{run.label} ({run.family})"


def fronts(runs: list[RunFront], x: str, path: Path, title: str) -> Path:
    """Accuracy retention against one cost: every trial faint, each front as a staircase."""
    label, scale = AXES[x]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, run in zip(COLORS, runs, strict=False):
        pts = [p for p in run.points if x in p]
        ax.scatter([p[x] * scale for p in pts], [p[run.accuracy_key] for p in pts], s=10,
                   alpha=0.25, color=color)
        xs, ys = staircase(run, x)
        if len(xs):
            # The staircase holds its last level up to the dearest plan explored.
            line_x = np.append(xs, max(dearest(run, x), xs[-1])) * scale
            ax.step(line_x, np.append(ys, ys[-1]), where="post", color=color, linewidth=2,
                    label=legend(run))
            ax.scatter(xs * scale, ys, color=color, s=22, zorder=3)
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy retention (proxy)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _grid(values: dict[str, float]) -> tuple[np.ndarray, list[int]]:
    """Layer name -> value, as a [block, kind] matrix."""
    import re

    blocks = sorted({int(m.group(1)) for n in values
                     if (m := re.search(r"layers\.(\d+)\.", n))})
    grid = np.full((len(blocks), len(KINDS)), np.nan)
    for name, value in values.items():
        match = re.search(r"layers\.(\d+)\..*?(\w+_proj)$", name)
        if match and match.group(2) in KINDS:
            grid[blocks.index(int(match.group(1))), KINDS.index(match.group(2))] = value
    return grid, blocks


def heatmaps(panels: list[tuple[str, dict[str, float]]], path: Path, title: str, *,
             colorbar: str, log: bool = False, levels: list[int] | None = None) -> Path:
    """One heatmap (block × linear type) per panel, side by side, on one colour scale:
    log10 values when `log` (non-positive values are left blank), or one distinct colour
    per value of `levels` (e.g. the bitwidths)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    grids = [_grid(values) for _, values in panels]
    shown = [np.log10(np.where(g > 0, g, np.nan)) if log else g for g, _ in grids]
    cmap, norm = "viridis", None
    if levels:
        cmap = ListedColormap(plt.get_cmap("plasma")(np.linspace(0.05, 0.95, len(levels))))
        norm = BoundaryNorm(np.arange(len(levels) + 1) - 0.5, len(levels))
        shown = [np.vectorize(lambda v: levels.index(v) if v in levels else np.nan)(g)
                 for g, _ in grids]
    parts = [v[np.isfinite(v)] for v in shown]
    finite = np.concatenate(parts) if any(len(p) for p in parts) else np.array([0.0, 1.0])
    low, high = (None, None) if levels else (float(finite.min()), float(finite.max()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, _), (grid, blocks), values in zip(axes[0], panels, grids, shown,
                                                     strict=True):
        image = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm, vmin=low, vmax=high)
        ax.set_xticks(range(len(KINDS)), [k.removesuffix("_proj") for k in KINDS],
                      rotation=45)
        ax.set_yticks(range(len(blocks)), [str(b) for b in blocks])
        ax.set_ylabel("block")
        ax.set_title(name)
        if not log:
            for (i, j), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(j, i, f"{value:g}", ha="center", va="center", color="white",
                            fontsize=8)
        bar = fig.colorbar(image, ax=ax, label=colorbar)
        if levels:
            bar.set_ticks(range(len(levels)), labels=[str(v) for v in levels])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _errors(rows, value, interval):
    """Asymmetric error bars from 95% intervals (none where a row has no interval)."""
    lows, highs = [], []
    for row in rows:
        low, high = interval(row)
        lows.append(0.0 if low is None else value(row) - low)
        highs.append(0.0 if high is None else high - value(row))
    return [lows, highs]


def uniform(rows_by_model: dict[str, list[dict]], path: Path) -> Path:
    """Proxy retention and pass@1 of the uniform plans, by bitwidth."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for color, (label, rows) in zip(COLORS, rows_by_model.items(), strict=False):
        ordered = sorted(rows, key=lambda r: r["bits"])
        bits = [str(r["bits"]) for r in ordered]
        axes[0].errorbar(bits, [r["retention"] for r in ordered], marker="o", color=color,
                         label=label, capsize=3, yerr=_errors(
                             ordered, lambda r: r["retention"],
                             lambda r: (r.get("retention_low"), r.get("retention_high"))))
        for style, bench in zip(("-", "--", ":", "-."), sorted(ordered[0]["pass@1"]),
                                strict=False):
            axes[1].errorbar(bits, [r["pass@1"][bench] for r in ordered], linestyle=style,
                             marker="o", color=color, label=f"{label} {bench}", capsize=3,
                             yerr=_errors(ordered, lambda r, b=bench: r["pass@1"][b],
                                          lambda r, b=bench: r.get("pass@1_interval", {})
                                          .get(b, (None, None))))
    axes[0].set_ylabel("proxy retention")
    axes[1].set_ylabel("pass@1")
    for ax in axes:
        ax.set_xlabel("uniform bits")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # off the lines
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
