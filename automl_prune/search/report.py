"""What a search leaves in its folder: trials.csv, best.yaml or pareto/, plots and report.md.

Everything here is rebuilt from the study (Optuna storage) and ``final.json``, so
``automl-prune report DIR`` regenerates it at any time.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..pruning.plan import PruningPlan
from .config import load_config
from .storage import STALE, storage_url, study_name


def write_trials_csv(study: optuna.Study, out: Path) -> None:
    df = study.trials_dataframe(attrs=("number", "value" if len(study.directions) == 1 else "values", "params", "state",
                                       "duration", "user_attrs"))
    drop = [c for c in df.columns if c == "user_attrs_plan"]
    df.drop(columns=drop).to_csv(out / "trials.csv", index=False)


def _plan_file(plan: dict, origin: dict | None) -> PruningPlan:
    """A plan as its file records it: with the study's calibration and held-out text (``origin``)."""
    return PruningPlan.from_dict({**plan, **(origin or {})})


def write_plans(study: optuna.Study, out: Path, origin: dict | None = None) -> list[Path]:
    """best.yaml (single objective) or pareto/trial-N.yaml (several), each with the study's ``origin``."""
    done = [t for t in study.best_trials if "plan" in t.user_attrs] if study.trials else []
    written = []
    if len(study.directions) == 1:
        try:
            best = study.best_trial
        except ValueError:
            return []
        selected = study.user_attrs.get("selected_trial")  # multi-fidelity selection chose another trial
        if selected is not None:
            best = study.get_trials(deepcopy=False)[selected]
        _plan_file(best.user_attrs["plan"], origin).save(out / "best.yaml")
        return [out / "best.yaml"]
    (out / "pareto").mkdir(exist_ok=True)
    for t in done:
        path = out / "pareto" / f"trial-{t.number}.yaml"
        _plan_file(t.user_attrs["plan"], origin).save(path)
        written.append(path)
    return written


def is_polished(row: dict) -> bool:
    """A row of final.json that is a polished plan: a searched row with a target sparsity."""
    return row["kind"] == "searched" and row.get("target") is not None


def polished_rows(final: dict | None) -> list[dict]:
    return [r for r in (final or {}).get("rows", []) if is_polished(r)]


def baseline_ppl(final: dict | None, name: str = "wanda") -> dict:
    """Held-out perplexity of the baseline ``name`` by target sparsity."""
    return {r.get("target"): r["ppl"] for r in (final or {}).get("rows", []) if r["kind"] == "baseline" and r["name"] == name}


def write_polished_plans(final: dict | None, out: Path, origin: dict | None = None) -> list[Path]:
    """polished/sparsity-S.yaml: the polished plan of each target sparsity (from final.json)."""
    rows = polished_rows(final)
    if rows:
        (out / "polished").mkdir(exist_ok=True)
    written = []
    for r in rows:
        path = out / "polished" / f"sparsity-{r['target']:g}.yaml"
        _plan_file(r["plan"], origin).save(path)
        written.append(path)
    return written


def plot_history(study: optuna.Study, names: list[str], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
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
    fig.tight_layout()
    path = out / "history.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def plot_pareto(study: optuna.Study, names: list[str], final: dict | None, out: Path) -> Path | None:
    if len(study.directions) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in study.best_trials}
    changes = change_vs_baseline(final)
    ncols = 1 + bool(final) + bool(changes)
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    ax = axes[0][0]
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
        ax = axes[0][1]
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
        ax = axes[0][2]
        xs = [f"{t:g}" for t, _ in changes]
        ys = [c for _, c in changes]
        ax.bar(xs, ys, color=["C2" if c < 0 else "C3" for c in ys])
        for i, c in enumerate(ys):
            ax.annotate(f"{c:+.2f}%" if abs(c) < 1 else f"{c:+.1f}%", (i, c), ha="center", va="top" if c < 0 else "bottom", fontsize=8)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("target sparsity")
        ax.set_ylabel("held-out ppl vs uniform Wanda (%)")
        ax.set_title("polished plans against Wanda")
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def change_vs_baseline(final: dict | None, baseline: str = "wanda") -> list[tuple[float, float]]:
    """(target, % change of held-out perplexity) of each polished plan against ``baseline`` at its target."""
    base = baseline_ppl(final, baseline)
    return sorted((r["target"], 100 * (r["ppl"] / base[r["target"]] - 1)) for r in polished_rows(final) if r["target"] in base)


def plot_layerwise(plan: PruningPlan, out: Path) -> Path | None:
    """layerwise.png: the best plan's sparsity per decoder block (a per-block allocation) or per
    layer (per-layer sparsities, e.g. the evolution's levels: one marker per layer type, by block)."""
    if not isinstance(plan.sparsity, list) and not plan.layer_sparsity:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
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
    fig.tight_layout()
    path = out / "layerwise.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v) -> str:
    """Objective values, everywhere at one precision: 6 significant digits (near-ties stay visible)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def row_label(r: dict) -> str:
    """A searched row's name, saying when the chosen trial is one of the named points the study
    started from, and which step chose it (the selection stages or the fast objective alone)."""
    notes = [f"named point {r['named_point']}"] if r.get("named_point") else []
    if r.get("selected_by"):
        notes.append({"selection stages": "selected by the stages", "first phase": "the first phase's plan, base allocation"}
                     .get(r["selected_by"], "the fast objective's best"))
    return f"{r['name']} ({', '.join(notes)})" if notes else r["name"]


def headline(final: dict | None) -> list[str]:
    """One line per searched plan: its held-out perplexity against the best baseline at its sparsity."""
    if not final:
        return []
    rows = final.get("rows", [])
    base = [r for r in rows if r["kind"] == "baseline"]
    out = []
    for r in (r for r in rows if r["kind"] == "searched"):
        if is_polished(r):  # the baselines at the same target sparsity
            peers = [b for b in base if b.get("target") == r["target"]]
        else:
            peers = [b for b in base if abs(b["sparsity"] - r["sparsity"]) < 0.01]
        if not peers:
            out.append(f"**{row_label(r)}**: held-out perplexity {r['ppl']:.3f} at sparsity {r['sparsity']:.4f} (no baseline at this sparsity).")
            continue
        best = min(peers, key=lambda b: b["ppl"])
        change = 100 * (r["ppl"] / best["ppl"] - 1)
        verdict = "better than" if r["ppl"] < best["ppl"] else ("the same as" if r["ppl"] == best["ppl"] else "worse than")
        line = (f"**{row_label(r)}**: held-out perplexity {r['ppl']:.3f} at sparsity {r['sparsity']:.4f}, {verdict} the best "
                f"named method ({best['name']}, {best['ppl']:.3f}; {change:+.1f}%).")
        if r.get("named_point") and r.get("selected_by") == "selection stages":
            line += f" The selection stages found no candidate better than the named point {r['named_point']}."
        elif r.get("named_point"):
            line += (f" The search found no candidate better on its objective than the named point {r['named_point']} "
                     "it started from.")
        out.append(line)
    return [" ".join(out), ""] if len(out) == 1 else [*(f"- {line}" for line in out), ""]


def polish_section(final: dict) -> list[str]:
    """Per-point polishing: what each target's short TPE found on its objective, next to Wanda's value."""
    polish = final.get("polish") or []
    if not polish:
        return []
    ppl = {r["target"]: r["ppl"] for r in polished_rows(final)}
    wanda = baseline_ppl(final, "wanda")
    name = polish[0].get("objective", "objective")
    staged = next((p["selection"] for p in polish if p.get("selection")), None)
    lines = ["", "### Polishing", "",
             f"Each target sparsity got a short TPE with the sparsity fixed, scored by `{name}`, started from the named "
             "methods and the front's best trials there."
             + ("" if staged is None else f" Its best distinct candidates and the named points ({staged['pool']} plans) were then "
                "selected in stages on fresh calibration-domain tokens ("
                + " -> ".join(f"{st['tokens']:,}" for st in staged["stages"]) + " tokens, "
                f"`{staged['objective']['name']}`); the last stage's best is the polished plan."), ""]
    extra = ("", "") if staged is None else (" last stage: selected | last stage: Wanda |", "---:|---:|")
    lines += [f"| target | trials | best trial (start) | {name} best | {name} Wanda |{extra[0]} held-out ppl | Wanda held-out ppl |",
              f"|---:|---:|---|---:|---:|{extra[1]}---:|---:|"]
    for p in polish:
        b, w = p.get("best") or {}, p.get("wanda") or {}
        start = b.get("named_point") or (f"front trial {b['front_trial']}" if b.get("front_trial") is not None else "TPE")
        cells = ""
        if staged is not None:
            stages = (p.get("selection") or {}).get("stages") or [{}]
            got = {c["trial"]: c["value"] for c in stages[-1].get("candidates", [])}
            cells = f" {_fmt(got.get(b.get('trial')))} | {_fmt(got.get(w.get('trial')))} |"
        lines.append(f"| {p['point']:g} | {p.get('trials')} | {b.get('trial', '-')} ({start}) | {_fmt(b.get('value'))} | "
                     f"{_fmt(w.get('value'))} |{cells} {_fmt(ppl.get(p['point']))} | {_fmt(wanda.get(p['point']))} |")
    return lines


def budget_lines(meta: dict) -> list[str]:
    """Whether the trial budget was spent or this run's timeout cut it, and how to continue."""
    budget, stopped, n = meta.get("budget") or {}, meta.get("stopped_by"), meta.get("finished_trials")
    if stopped == "timeout" and budget.get("trials"):
        return [f"**The search stopped at this run's timeout ({budget['timeout']:.0f} s) after {n} of {budget['trials']} "
                "trials.** Run the same command again to continue the study where it stopped (finished trials are "
                "kept), or give a larger --timeout.", ""]
    if stopped == "timeout":
        return [f"The search ran for its timeout ({budget.get('timeout', 0):.0f} s): {n} trials. Run the same command "
                "again to continue the study.", ""]
    if stopped == "trials":
        return [f"The trial budget ({budget['trials']}) is spent; a larger --trials extends the study.", ""]
    return []


def diagnostic_note(final: dict) -> str:
    """What the fidelity sample is (a diagnostic, never a selection) and what it shows against the baseline."""
    fid = final.get("fidelity") or {}
    searched = [r for r in final.get("rows", []) if r["kind"] == "searched" and not is_polished(r)]
    base = [r for r in final.get("rows", []) if r["kind"] == "baseline"
            and any(abs(r["sparsity"] - s["sparsity"]) < 0.01 for s in searched)]
    text = ("These trials were evaluated on held-out text only to measure how well the objective ranks plans: a "
            "diagnostic, never a selection (choosing among them by held-out perplexity would select on the test text); "
            + ("the plan chosen above is the one the selection stages chose." if final.get("selection")
               else "the plan chosen above is the objective's best."))
    ppl = fid.get("heldout_ppl") or []
    if base and ppl:
        best = min(base, key=lambda r: r["ppl"])
        beat = sum(p < best["ppl"] for p in ppl)
        text += (f" {beat} of the {len(ppl)} sampled trials have a lower held-out perplexity than {best['name']} "
                 f"({best['ppl']:.3f})" + (": the objective does not tell the best candidates apart; a slower, more "
                                           "faithful selection step (e.g. KL on more probe tokens) is what finds them."
                                           if beat and searched and searched[0]["ppl"] >= best["ppl"] else "."))
    return text


def selection_section(final: dict, heading: str = "### Selection") -> list[str]:
    """Multi-fidelity selection: each stage's tokens, candidates, kept, best, and its rank
    correlation with held-out perplexity; then what the selection bought, held out."""
    sel = final.get("selection")
    if not sel:
        return []
    obj = sel["objective"]["name"]
    fid = {r["stage"]: r for r in (sel.get("fidelity") or {}).get("stages", [])}
    if sel.get("searcher") == "evolution":
        intro = (f"Evolution over {sel.get('generations', 0)} generations: every child scored by the fast objective "
                 f"(stage 1); each generation's best children and the parent ({sel['pool']} candidates in all) scored "
                 f"again by `{obj}` on fresh calibration-domain tokens, a new minibatch every generation, all finalists of a "
                 "generation on the same one (stage 2, overlapping none of the calibration and probe windows); the last "
                 "parent is the selected plan. The table shows the last generation's stage.")
    else:
        intro = (f"The fast objective's {sel['pool']} best distinct candidates and the named points were scored again by "
                 f"`{obj}` in stages on fresh calibration-domain tokens (overlapping none of the calibration and probe "
                 "windows; every candidate of a stage on the same windows); the best of the last stage is the selected "
                 f"plan. Selection took {sel.get('seconds') or 0:.0f} s.")
    lines = ["", heading, "", intro, "",
             f"| stage | tokens (windows x seqlen) | candidates | kept | best trial | best {obj} | Spearman with held-out "
             "(stage / fast objective, n) |", "|---:|---|---:|---:|---:|---:|---|"]
    for st in sel["stages"]:
        f = fid.get(st["stage"], {})
        best = st["candidates"][0] if st["candidates"] else {}
        lines.append(f"| {st['stage']} | {st['tokens']} ({st['windows']} x {st['seqlen']}) | {len(st['candidates'])} | "
                     f"{len(st['kept'])} | {best.get('trial', '-')} | {_fmt(best.get('value'))} | "
                     f"{_fmt(f.get('spearman'))} / {_fmt(f.get('fast_spearman'))}, {f.get('n', 0)} |")
    rows = {r.get("selected_by"): r for r in final.get("rows", []) if r.get("selected_by")}
    picked, fast = rows.get("selection stages"), rows.get("fast objective")
    lines.append("")
    if picked and fast:
        change = 100 * (picked["ppl"] / fast["ppl"] - 1)
        lines.append(f"What the selection bought: trial {picked['trial']} (selected) {picked['ppl']:.3f} against trial "
                     f"{fast['trial']} (the fast objective's best) {fast['ppl']:.3f} held out ({change:+.1f}%).")
    elif picked:
        lines.append(f"The stages selected the fast objective's best as well (trial {picked['trial']}).")
    lines.append("The held-out figures of the stage candidates are a diagnostic of each stage's fidelity; no selection "
                 "step read them.")
    return lines


def allocation_phase_section(final: dict, meta: dict) -> list[str]:
    """A joint plan: the first phase's selection (metric x update), then what the allocation phase
    (evolution over the level database of the first phase's plan) bought over it, held out."""
    phase = meta.get("allocation_phase")
    if not phase:
        return []
    rows = {r.get("selected_by"): r for r in final.get("rows", []) if r.get("selected_by")}
    first, picked = rows.get("first phase"), rows.get("selection stages")
    lines = ["", "### First phase: metric x update", "",
             f"The first phase searched the metric on masks; its selection chose trial {phase['start_trial']}. Its plan, at "
             f"the base allocation, started the allocation phase (study `{phase['study']}`: {phase.get('finished_trials', 0)} "
             f"trials, level database {phase.get('database_seconds') or 0:.0f} s, search {phase.get('seconds') or 0:.0f} s this "
             "run)."]
    if first and picked:
        change = 100 * (picked["ppl"] / first["ppl"] - 1)
        lines += ["", f"What the allocation phase bought: {picked['ppl']:.3f} (trial {picked['trial']} of the allocation phase) "
                      f"against {first['ppl']:.3f} (the first phase's plan at the base allocation) held out ({change:+.1f}%)."]
    if final.get("first_phase"):
        lines += selection_section({"selection": final["first_phase"], "rows": []}, heading="#### Its selection stages")
    return lines


def _over_every_run(meta: dict, key: str) -> str:
    """"; T s over every run of this study." when ``<key>_total`` exceeds this run's ``key``."""
    total = meta.get(f"{key}_total", 0)
    return f"; {total:.0f} s over every run of this study." if total > meta[key] + 1 else "."


def searcher_text(searcher: dict | None) -> str:
    """The searcher with the settings that apply to it (population for NSGA-III, startup trials for TPE)."""
    if not searcher:
        return "?"
    name = searcher.get("name")
    extra = {"tpe": ["n_startup_trials"], "nsga3": ["population"], "pymoo-nsga3": ["population"],
             "evolution": ["offspring", "survivors", "stage_tokens"]}.get(name, [])
    parts = [f"seed {searcher.get('seed')}"] + [f"{k.replace('_', ' ')} {searcher[k]}" for k in extra if k in searcher]
    if not searcher.get("seed_named_points", True):
        parts.append("named points not seeded")
    return f"{name} ({', '.join(parts)})"


def write_report(study: optuna.Study, out: Path, names: list[str], meta: dict, final: dict | None) -> Path:
    """report.md: settings, search summary, the comparison table, fidelity, plots."""
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)}
    reused = sum(bool(t.user_attrs.get("reused")) for t in trials)
    lines = [f"# Search report: {meta.get('model', {}).get('spec', '?')}", ""]
    lines += headline(final)
    lines += ["## Settings", "", "| | |", "|---|---|"]
    cal = meta.get("calibration") or {}
    probe = meta.get("probe") or {}
    held = meta.get("heldout") or {}
    lines += [f"| model | {meta.get('model', {}).get('spec')} ({meta.get('model', {}).get('n_params', 0) / 1e6:.1f}M parameters) |",
              f"| calibration | {cal.get('source')} {cal.get('nsamples') or cal.get('n_windows')} x {cal.get('seqlen')}, seed {cal.get('seed')} |",
              f"| probe windows | {probe.get('source')} {probe.get('n_windows')} x {probe.get('seqlen')}, seed {probe.get('seed')} |",
              f"| held-out | {held.get('source')} {held.get('n_windows')} x {held.get('seqlen')} |",
              f"| mode | {meta.get('mode', 'one-shot')} (candidates scored from dense statistics) |",
              f"| objectives | {', '.join(names)} |",
              f"| searcher | {searcher_text(meta.get('searcher'))} |",
              f"| versions | {', '.join(f'{k} {v}' for k, v in (meta.get('versions') or {}).items())} |", ""]
    lines += ["## Search", "",
              f"{len(trials)} trials: {states[TrialState.COMPLETE]} complete, {states[TrialState.FAIL]} failed, "
              f"{states[TrialState.PRUNED]} stopped early; {reused} reused stored values (same canonical form or masks) "
              f"instead of being scored again{stale_text(trials)}.", ""]
    lines += budget_lines(meta)
    if meta.get("search_seconds") is not None:
        rate = meta.get("candidates_per_minute")
        lines += [f"Search time {meta['search_seconds']:.0f} s this run ({meta.get('trials_this_run', 0)} trials"
                  + (f", {rate:.1f} candidates/min)" if rate else ")")
                  + _over_every_run(meta, "search_seconds"), ""]
    if meta.get("selection_seconds"):
        lines += [f"Selection: {meta['selection_seconds']:.0f} s this run" + _over_every_run(meta, "selection_seconds"), ""]
    if meta.get("polish_seconds"):
        lines += [f"Polishing ({len((final or {}).get('polish') or [])} target sparsities): {meta['polish_seconds']:.0f} s this run"
                  + _over_every_run(meta, "polish_seconds"), ""]
    if final:
        if final.get("from_earlier_run"):
            lines += ["The held-out comparison below is from an earlier run of this study (final.json; this run used "
                      "--no-final): trials added since are not in it.", ""]
        zs = any(r.get("zero_shot") for r in final["rows"])
        lines += ["## Held-out comparison", "", "| plan | kind | " + " | ".join(names) + " | held-out ppl | sparsity |"
                  + (" zero-shot acc / acc_norm |" if zs else ""),
                  "|---|---|" + "---:|" * len(names) + "---:|---:|" + ("---:|" if zs else "")]
        for r in sorted(final["rows"], key=lambda r: (r["sparsity"], r["ppl"])):
            z = r.get("zero_shot") or {}
            lines.append(f"| {row_label(r) if r['kind'] == 'searched' else r['name']} | {r['kind']} | " + " | ".join(_fmt(v) for v in r["values"]) +
                         f" | {r['ppl']:.3f} | {r['sparsity']:.4f} |" +
                         ((f" {z['acc']:.4f} / {z.get('acc_norm', float('nan')):.4f} |" if z else " - |") if zs else ""))
        if zs:
            z = next(r["zero_shot"] for r in final["rows"] if r.get("zero_shot"))
            lines += ["", f"Zero-shot: the average over {', '.join(z['tasks'])} on the first {z['limit']} documents of "
                          "each task (lm-eval prompts and metrics; acc_norm averages acc where a task has no acc_norm)."]
        lines += polish_section(final)
        lines += allocation_phase_section(final, meta)
        lines += selection_section(final)
        fid = final.get("fidelity") or {}
        lines += ["", "## Does the objective track held-out perplexity?", ""]
        if fid.get("spearman"):
            lines += [f"Spearman rank correlation over {fid['n']} trials spread across the objective's range: " +
                      ", ".join(f"{k} {_fmt(v)}" for k, v in fid["spearman"].items()) + ".", ""]
            lines += [diagnostic_note(final), ""]
        else:
            lines += [f"Not measured: {fid.get('note', 'no sample')}.", ""]
    lines += ["## Plots", ""]
    for png in ("history.png", "pareto.png", "layerwise.png"):
        if (out / png).exists():
            lines.append(f"![{png[:-4]}]({png})")
    lines += ["", "Plans: " + ("`best.yaml`" if (out / "best.yaml").exists() else "`pareto/*.yaml`") +
              (", the polished ones `polished/sparsity-S.yaml`" if (out / "polished").is_dir() else "") +
              "; apply one with `automl-prune prune --model M --plan FILE --out DIR`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def stale_text(trials: list) -> str:
    """The trials failed as stale (their driver stopped while they ran; storage.fail_orphans)."""
    stale = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("error") == STALE]
    if not stale:
        return ""
    retried = sum(1 for t in trials if t.system_attrs.get("failed_trial") is not None)
    return (f"; {len(stale)} of the failed trials were stale (their driver stopped while they ran), "
            f"{retried} retried")


def rebuild(out: Path) -> Path:
    """Regenerate every output of a search folder from its study and final.json."""
    config = load_config(out / "config.yaml")
    study = optuna.load_study(study_name=study_name(config), storage=storage_url(config, out))
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    final = json.loads((out / "final.json").read_text()) if (out / "final.json").exists() else None
    delivered = None
    if config.allocation_search is not None and meta.get("allocation_phase"):
        delivered = optuna.load_study(study_name=meta["allocation_phase"]["study"], storage=storage_url(config, out))
    return write_outputs(study, out, [o.name for o in config.objectives], meta, final, origin=config.plan_origin(),
                         delivered=delivered)


def write_outputs(study: optuna.Study, out: Path, names: list[str], meta: dict, final: dict | None,
                  origin: dict | None = None, delivered: optuna.Study | None = None) -> Path:
    """Every output of a search folder; plan files record ``origin`` (``StudyConfig.plan_origin``).
    ``delivered``: the study whose selected plan is best.yaml (a joint plan's allocation phase;
    default ``study``)."""
    write_trials_csv(study, out)
    plans = write_plans(delivered if delivered is not None else study, out, origin)
    write_polished_plans(final, out, origin)
    plot_history(study, names, out)
    plot_pareto(study, names, final, out)
    if len(study.directions) == 1 and plans:
        plot_layerwise(PruningPlan.load(plans[0]), out)
    return write_report(study, out, names, meta, final)
