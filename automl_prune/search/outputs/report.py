"""report.md: the settings, the search, the held-out comparison, what selection bought, the
objective's fidelity and the plots, as a person reads them (written by outputs.write_outputs)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from ...atomic import write_text_atomic
from ..study.results import FinalResult, baseline_ppl, is_polished, polished_rows
from ..study.searcher_configs import summary
from ..study.storage import STALE


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


def headline(final: FinalResult | None) -> list[str]:
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
    choice = final.get("mode_choice")
    if choice:
        values = ", ".join(f"{m} {v:.5g}" for m, v in choice["values"].items() if v is not None)
        out.insert(0, f"The selected plan is delivered **{choice['mode']}** (best.yaml records it): chosen by "
                      f"{choice['objective']['name']} on {choice['tokens']} fresh calibration-domain tokens ({values}); "
                      "the held-out text was not read for the choice. Every plan below is shown in each mode; the "
                      "objective values are the one-shot ones.")
    return [" ".join(out), ""] if len(out) == 1 else [*(f"- {line}" for line in out), ""]


def polish_section(final: FinalResult) -> list[str]:
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


def diagnostic_note(final: FinalResult) -> str:
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


def selection_section(final: FinalResult, heading: str = "### Selection") -> list[str]:
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


def allocation_phase_section(final: FinalResult, meta: dict) -> list[str]:
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


def write_report(study: optuna.Study, out: Path, names: list[str], meta: dict, final: FinalResult | None) -> Path:
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
              f"| searcher | {summary(meta.get('searcher'))} |",
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
    if meta.get("recipe"):  # how the recipe's hours were spent, phase by phase (phase_log.py)
        spent = ", ".join(f"{name} {rec.get('seconds', 0):.0f} s" for name, rec in (meta.get("phases") or {}).items())
        lines += [f"Recipe ({meta['recipe'].get('hours')} h): {spent}; a candidate of the metric search costs "
                  f"{60 / meta['candidates_per_minute']:.1f} s here." if meta.get("candidates_per_minute") else
                  f"Recipe ({meta['recipe'].get('hours')} h): {spent}.", ""]
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
    write_text_atomic(path, "\n".join(lines))
    return path


def stale_text(trials: list) -> str:
    """The trials failed as stale (their driver stopped while they ran; storage.fail_orphans)."""
    stale = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("error") == STALE]
    if not stale:
        return ""
    retried = sum(1 for t in trials if t.system_attrs.get("failed_trial") is not None)
    return (f"; {len(stale)} of the failed trials were stale (their driver stopped while they ran), "
            f"{retried} retried")
