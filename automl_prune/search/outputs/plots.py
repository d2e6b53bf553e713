"""The search folder's plots: history.png, pareto.png and layerwise.png, drawn by one helper."""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ...atomic import atomic_file
from ...pruning.plan import PruningPlan
from ..study.results import FinalResult, change_vs_baseline, is_polished, polished_rows


@contextlib.contextmanager
def figure(path: Path, figsize: tuple[float, float], ncols: int = 1):
    """A figure of ``ncols`` axes side by side (matplotlib's Agg backend); laid out, saved to
    ``path`` at 110 dpi and closed when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    try:
        yield fig, axes[0]
        fig.tight_layout()
        with atomic_file(path) as tmp:  # a kill leaves the earlier plot, never half of one
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_history(study: optuna.Study, names: list[str], out: Path) -> Path | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    path = out / "history.png"
    with figure(path, (6.5, 3.8)) as (_, (ax,)):
        _history(ax, study, done, names)
    return path


def _history(ax, study: optuna.Study, done: list, names: list[str]) -> None:
    xs = [t.number for t in done]
    ys = [t.values[0] for t in done]
    ax.scatter(xs, ys, s=12, alpha=0.6, label="trial")
    named = [t for t in done if t.user_attrs.get("named_point")]
    if named:
        ax.scatter([t.number for t in named], [t.values[0] for t in named], marker="D", s=36, facecolors="none",
                   edgecolors="black", zorder=3, label="named point")
        for k, t in enumerate(named):  # staggered: the named points are the first trials, close together
            ax.annotate(t.user_attrs["named_point"], (t.number, t.values[0]), xytext=(6, 4 + 9 * (k % 4)),
                        textcoords="offset points", fontsize=7)
    scale = history_scale(ys)
    ax.set_yscale(scale)
    view = clipped_view(ys) if scale == "linear" else None
    if view is not None:  # a few outliers would squash every other trial into one band
        low, top = view
        above = [(x, y) for x, y in zip(xs, ys) if y > top]
        ax.set_ylim(low, top)
        ax.scatter([x for x, _ in above], [top] * len(above), marker="^", s=30, color="C1", clip_on=False, zorder=3,
                   label=f"{len(above)} trials above the view")
    if len(study.directions) == 1:
        better = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        run, best = [], None
        for y in ys:
            best = y if best is None else better(best, y)
            run.append(best)
        ax.plot(xs, run, color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(names[0])
    ax.set_title("optimisation history")
    ax.legend()


def history_scale(values: list[float]) -> str:
    """``log`` when a few outliers would squash every other trial into one band on a linear axis
    (positive values spanning more than 10x), else ``linear``."""
    if not values or min(values) <= 0:
        return "linear"
    return "log" if max(values) / min(values) > 10 else "linear"


def clipped_view(values: list[float]) -> tuple[float, float] | None:
    """(bottom, top) of a linear view that shows the best 90% of the trials spread out, when the
    rest lie far above them (more than the 90% band's own height); None when everything fits."""
    ordered = sorted(values)
    lo, hi = ordered[0], ordered[int(0.9 * (len(ordered) - 1))]
    span = hi - lo
    if span <= 0 or ordered[-1] - hi <= span:
        return None
    return lo - 0.1 * span, hi + 0.6 * span


def plot_pareto(study: optuna.Study, names: list[str], final: FinalResult | None, out: Path) -> Path | None:
    if len(study.directions) < 2:
        return None
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in study.best_trials}
    changes = change_vs_baseline(final)
    ncols = 1 + bool(final) + bool(changes)
    path = out / "pareto.png"
    with figure(path, (5.5 * ncols, 4), ncols) as (_, axes):
        _pareto(axes, done, front, final, changes, names)
    return path


def _pareto(axes, done: list, front: set, final: FinalResult | None, changes: list, names: list[str]) -> None:
    ax = axes[0]
    ax.scatter([t.values[1] for t in done], [t.values[0] for t in done], s=10, alpha=0.35, label="trials")
    f = sorted((t for t in done if t.number in front), key=lambda t: t.values[1])
    ax.plot([t.values[1] for t in f], [t.values[0] for t in f], "o-", color="C3", label="Pareto front")
    polished = polished_rows(final)
    if polished:
        ax.scatter([r["values"][1] for r in polished], [r["values"][0] for r in polished], marker="*", s=120, color="C2",
                   zorder=3, label="polished")
    ax.set_xlabel(names[1])
    ax.set_ylabel(names[0])
    ax.set_title("search objectives")
    ax.legend()
    if final:
        ax = axes[1]
        for kind, style in (("searched", "o-"), ("baseline", "s--")):
            groups: dict[str, list] = {}
            for r in final["rows"]:
                if r["kind"] == kind:
                    label = ("polished" if is_polished(r) else "front") if kind == "searched" else r["name"]
                    groups.setdefault(label, []).append(r)
            for label, rows in groups.items():
                rows = sorted(rows, key=lambda r: r["sparsity"])
                ax.plot([r["sparsity"] for r in rows], [r["ppl"] for r in rows], style, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("realised sparsity")
        ax.set_ylabel("held-out perplexity")
        ax.set_title("held-out perplexity")
        ax.legend(fontsize=8)
    if changes:
        ax = axes[2]
        xs = [f"{t:g}" for t, _ in changes]
        ys = [c for _, c in changes]
        ax.bar(xs, ys, color=["C2" if c < 0 else "C3" for c in ys])
        for i, c in enumerate(ys):
            ax.annotate(f"{c:+.2f}%" if abs(c) < 1 else f"{c:+.1f}%", (i, c), ha="center", va="top" if c < 0 else "bottom", fontsize=8)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("target sparsity")
        ax.set_ylabel("held-out ppl vs uniform Wanda (%)")
        ax.set_title("polished plans against Wanda")


def plot_layerwise(plan: PruningPlan, out: Path) -> Path | None:
    """layerwise.png: the best plan's sparsity per decoder block (a per-block allocation) or per
    layer (per-layer sparsities, e.g. the evolution's levels: one marker per layer type, by block)."""
    if not isinstance(plan.sparsity, list) and not plan.layer_sparsity:
        return None
    path = out / "layerwise.png"
    with figure(path, (6.5, 3.2)) as (_, (ax,)):
        _layerwise(ax, plan)
    return path


def _layerwise(ax, plan: PruningPlan) -> None:
    if plan.layer_sparsity:
        kinds: dict[str, list[tuple[int, float]]] = {}
        for name, value in plan.layer_sparsity.items():
            block, layer = name.split(".", 1)
            kinds.setdefault(layer.rsplit(".", 1)[-1], []).append((int(block), value))
        for i, (kind, points) in enumerate(sorted(kinds.items())):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=0.8, label=kind, color=f"C{i % 10}")
        ax.legend(fontsize=6, ncol=4)
        ax.set_title("per-layer sparsity of the best plan")
    else:
        ax.bar(range(len(plan.sparsity)), plan.sparsity, color="C0")
        ax.set_title("layerwise sparsity of the best plan")
    ax.set_xlabel("decoder block")
    ax.set_ylabel("sparsity")
