"""The closing comparison: best plan(s) and the named baselines on held-out text, side by side,
and the rank correlation between the search objective and held-out perplexity."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import spearmanr

from objectives import make_objective

from ...allocation.profile import layer_alphas
from ...atomic import write_text_atomic
from ...candidate_context import CandidateContext
from ...candidate_stream import candidate_perplexity
from ...evaluation.zeroshot import ZeroShotSuite
from ...host_memory import release_growth
from ...models.adapters import needs_bos
from ...progress import progress_bar
from ...pruning.apply import needs_statistics
from ...pruning.methods import ALLOCATION_BASELINES, allocation_baseline_plan, plan_for_method
from ...pruning.plan import PruningPlan
from ..execution.candidate import mask_hash, score_candidate
from ..execution.scoring import fresh_stage_windows, score_stage
from ..study.config import ObjectiveConfig
from ..study.definition import sign_of
from ..study.results import FinalResult, PolishResult, ResultRow, SelectionRecord
from ..study.state import SearchState
from .base import Phase, StudyRun
from .selection import study_plan

log = logging.getLogger(__name__)


class HeldoutEvaluator:
    """Held-out perplexity of plans, memoised by mask hash (equal masks are evaluated once)."""

    def __init__(self, ctx: CandidateContext):
        self.ctx = ctx
        self.memo: dict[str, float] = {}

    def __call__(self, plan: PruningPlan) -> tuple[float, float, str]:
        ctx = self.ctx
        result = ctx.apply(plan)
        digest = mask_hash(ctx, plan)
        if digest not in self.memo:
            self.memo[digest] = candidate_perplexity(ctx, ctx.heldout_ids)["ppl"]
            release_growth()  # as after every candidate (host_memory.py)
        return self.memo[digest], result.realised_sparsity, digest


def chosen_trials(state: SearchState) -> list[FrozenTrial]:
    """Single objective: the ``top`` best distinct trials; several: the Pareto set, thinned to ``top``."""
    top = state.config.final.top
    done = [t for t in state.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "plan" in t.user_attrs]
    if not done or top == 0:
        return []
    if state.n_objectives == 1:
        sign = state.sign
        out, seen = [], set()
        for t in sorted(done, key=lambda t: sign * t.values[0]):
            key = t.user_attrs.get("mask_hash") or t.user_attrs.get("canonical_key")
            if key not in seen:
                seen.add(key)
                out.append(t)
            if len(out) == top:
                break
        return out
    front = sorted(state.study.best_trials, key=lambda t: t.values[0])
    if len(front) > top:
        idx = np.unique(np.linspace(0, len(front) - 1, top).round().astype(int))
        front = [front[i] for i in idx]
    return front


def _target(plan: PruningPlan, realised: float) -> tuple[float | None, str]:
    if plan.nm is not None:
        return None, plan.pattern
    if isinstance(plan.sparsity, float) and not plan.layer_sparsity:
        return plan.sparsity, "unstructured"
    if isinstance(plan.sparsity, float) and abs(realised - plan.sparsity) < 0.005:
        return plan.sparsity, "unstructured"  # per-layer sparsities around a stated target (levels)
    return round(realised, 4), "unstructured"


def baseline_plan(method: str, sparsity: float | None, pattern: str, state: SearchState) -> PruningPlan:
    """The plan of a named baseline at a target: a named method, or Wanda with the OWL or
    AlphaPruning allocation of this model at its paper's setting (pruning/methods.py)."""
    if method not in ALLOCATION_BASELINES:
        return plan_for_method(method, sparsity=sparsity, pattern=pattern)
    if sparsity is None:
        raise ValueError(f"baseline {method} allocates unstructured sparsity; it does not apply to {pattern}")
    profile, alphas = state.profile, None
    if ALLOCATION_BASELINES[method] == "alpha" and not profile.has_alphas:  # the search's profile did not need them
        alphas = np.array([float(np.mean(a)) for a in layer_alphas(state.ctx.blocks, store=state.ctx.store)[0]])
    return allocation_baseline_plan(method, sparsity, profile, alphas)


def selection_trials(state: SearchState, selection: dict) -> list[tuple[FrozenTrial, str]]:
    """The plan the stages selected and the fast objective's best (when it differs): what the
    selection bought is their held-out difference."""
    by_number = {t.number: t for t in state.study.get_trials(deepcopy=False)}
    out = [(by_number[selection["selected"]], "selection stages")]
    if selection["fast_best"] != selection["selected"]:
        out.append((by_number[selection["fast_best"]], "fast objective"))
    return out


def final_comparison(state: SearchState, *, polished: list[PolishResult] | None = None,
                     selection: SelectionRecord | None = None,
                     first_phase: tuple[SearchState, SelectionRecord | None, int] | None = None,
                     progress: bool = True) -> FinalResult:
    """Evaluate the chosen plans and the baselines at the same targets; Spearman over a sample.
    With ``polished`` (the results of per-point polishing) the polished plans are the chosen ones,
    each compared with the baselines at its target sparsity. With ``selection`` (multi-fidelity
    selection) the selected plan and the fast objective's best are the chosen ones, and each
    stage's rank correlation with held-out perplexity is measured over its candidates. With
    ``first_phase`` (the first phase's state, selection and chosen trial, when ``state`` is the
    allocation phase of a joint plan) that trial's plan is a row too (what the allocation phase
    bought) and the first phase's stages get their rank correlations."""
    cfg = state.config.final
    modes, mode_choice = list(cfg.modes), None
    heldout = HeldoutEvaluator(state.ctx)
    rows: list[ResultRow] = []
    targets: dict[tuple, None] = {}
    bar = dict(enabled=progress, leave=False)
    if polished:
        for p in progress_bar([p for p in polished if p.get("best")], desc="final: polished plans", unit="plan", **bar):
            plan = PruningPlan.from_dict(p["best"]["plan"])
            values = score_candidate(state.ctx, plan, state.objectives).values
            ppl, realised, _ = heldout(plan)
            rows.append(dict(kind="searched", name=f"polished {p['point']:g}", trial=p["best"]["trial"], values=values,
                             ppl=ppl, sparsity=realised, plan=plan.to_dict(), target=p["point"]))
            targets[(p["point"], "unstructured")] = None
    else:
        chosen = selection_trials(state, selection) if selection else [(t, None) for t in chosen_trials(state)]
        for t, by in progress_bar(chosen, desc="final: best plans", unit="plan", **bar):
            for mode, plan in in_modes(study_plan(state.config, t.user_attrs["plan"]), modes):
                ppl, realised, _ = heldout(plan)
                rows.append(dict(kind="searched", name=f"trial {t.number}" + (f" ({mode})" if len(modes) > 1 else ""),
                                 trial=t.number, values=list(t.values), ppl=ppl, sparsity=realised, plan=plan.to_dict(),
                                 named_point=t.user_attrs.get("named_point"), **({"selected_by": by} if by else {}),
                                 **({"mode": mode} if len(modes) > 1 else {})))
                targets[_target(plan, realised)] = None
        if len(modes) > 1 and chosen:  # the mode the delivered plan is applied in, chosen on fresh calibration tokens
            mode_choice = choose_mode(state, study_plan(state.config, chosen[0][0].user_attrs["plan"]), modes,
                                      progress=progress)
    if first_phase is not None:
        first, _, number = first_phase
        t = first.study.get_trials(deepcopy=False)[number]
        plan = study_plan(first.config, t.user_attrs["plan"])
        ppl, realised, _ = heldout(plan)
        rows.append(dict(kind="searched", name=f"first phase: trial {number}", trial=number, values=list(t.values), ppl=ppl,
                         sparsity=realised, plan=plan.to_dict(), named_point=t.user_attrs.get("named_point"),
                         selected_by="first phase", **({"mode": plan.mode} if len(modes) > 1 else {})))
    for sparsity, pattern in targets:
        for method in progress_bar(cfg.baselines, desc="final: baselines", unit="plan", **bar):
            try:
                named = baseline_plan(method, sparsity, pattern, state)
                values = score_candidate(state.ctx, named, state.objectives).values  # the objectives read it one-shot
            except Exception as exc:  # noqa: BLE001 - a baseline that fails is reported, not fatal
                log.warning("baseline %s failed: %s", method, exc)
                continue
            for mode, plan in in_modes(named, modes):
                try:
                    ppl, realised, _ = heldout(plan)
                except Exception as exc:  # noqa: BLE001 - as above
                    log.warning("baseline %s (%s) failed: %s", method, mode, exc)
                    continue
                rows.append(dict(kind="baseline", name=method if len(modes) == 1 else f"{method} ({mode})", values=values,
                                 ppl=ppl, sparsity=realised, plan=plan.to_dict(), target=sparsity,
                                 **({"mode": mode} if len(modes) > 1 else {})))
    if cfg.zero_shot is not None:
        zero_shot_rows(state, rows, progress=progress)
    fidelity = fidelity_sample(state, heldout, progress=progress)
    out = dict(rows=rows, fidelity=fidelity, **({"mode_choice": mode_choice} if mode_choice else {}))
    if selection:
        out["selection"] = {**selection, "fidelity": stage_fidelity(state, selection, heldout, progress=progress)}
    if first_phase is not None and first_phase[1]:
        first, sel, number = first_phase
        out["first_phase"] = {**sel, "fidelity": stage_fidelity(first, sel, heldout, progress=progress)}
    state.ctx.restore()
    if polished:  # the summary of each point; the plans themselves are in the rows
        out["polish"] = [{**p, "best": {k: v for k, v in (p.get("best") or {}).items() if k != "plan"}} for p in polished]
    return out


def in_modes(plan: PruningPlan, modes: list[str]) -> list[tuple[str, PruningPlan]]:
    """``plan`` in each of ``modes``; a plan that reads no statistics (magnitude) has no sequential form."""
    if len(modes) == 1:
        return [(modes[0], plan if plan.mode == modes[0] else plan.with_fields(mode=modes[0]))]
    return [(m, plan.with_fields(mode=m)) for m in modes if m == "one-shot" or needs_statistics(plan)]


def choose_mode(state: SearchState, plan: PruningPlan, modes: list[str], *, progress: bool = True) -> dict:
    """The mode ``plan`` is delivered in: each mode scored by the mode choice's objective on its fresh
    calibration-domain tokens (overlapping no calibration or probe window; the held-out text is never
    read); the best wins (ties: the first of ``modes``)."""
    mc, config = state.config.final.mode_choice, state.config
    spec = mc.objective or (config.selection.objective if config.selection is not None else
                            ObjectiveConfig(name="kl", params={"topk": 512}))
    objective = make_objective(spec.name, **spec.params)
    windows = fresh_stage_windows(state, mc.tokens, mc.seed)
    values = score_stage(state.ctx, objective, dict(in_modes(plan, modes)), windows=windows.input_ids,
                         label="final: mode choice", progress=progress)
    sign = sign_of(objective.direction)
    scored = [m for m in modes if values.get(m) is not None]
    mode = min(scored, key=lambda m: (sign * values[m], modes.index(m))) if scored else modes[0]
    log.info("final: the selected plan is delivered %s (%s on %d fresh tokens: %s)", mode, spec.name, mc.tokens,
             ", ".join(f"{m} {v:.5g}" for m, v in values.items() if v is not None))
    state.ctx.restore()
    return dict(mode=mode, values=values, objective=spec.model_dump(mode="json"), tokens=mc.tokens, seed=mc.seed,
                windows_sha256=windows.info.get("windows_sha256"))


def fidelity_sample(state: SearchState, heldout: HeldoutEvaluator, *, progress: bool = True) -> dict:
    """Spearman between each objective and held-out perplexity over trials spread across the ranks
    of the first objective (distinct masks only)."""
    k = state.config.final.fidelity_sample
    done = [t for t in state.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "plan" in t.user_attrs]
    distinct = {}
    for t in sorted(done, key=lambda t: t.values[0]):
        distinct.setdefault(t.user_attrs.get("mask_hash", t.number), t)
    pool = list(distinct.values())
    if k < 3 or len(pool) < 3:
        return dict(n=len(pool), spearman=None, note="fewer than 3 distinct trials")
    idx = np.unique(np.linspace(0, len(pool) - 1, min(k, len(pool))).round().astype(int))
    sample = [pool[i] for i in idx]
    ppl = []
    for t in progress_bar(sample, desc="final: fidelity", unit="plan", enabled=progress, leave=False):
        ppl.append(heldout(study_plan(state.config, t.user_attrs["plan"]))[0])
    out = dict(n=len(sample), trials=[t.number for t in sample], heldout_ppl=ppl, spearman={})
    for j, objective in enumerate(state.objectives):
        rho = spearmanr([t.values[j] for t in sample], ppl).statistic
        out["spearman"][objective.name] = None if np.isnan(rho) else float(rho)
    return out


def stage_fidelity(state: SearchState, selection: dict, heldout: HeldoutEvaluator, *, progress: bool = True) -> dict:
    """Held-out perplexity of the last stage's candidates and of ``final.fidelity_sample`` of the
    first stage's, spread over its ranking (a diagnostic, never a selection); then, per stage and
    for the fast objective, the Spearman correlation with it over the candidates it scored."""
    stages = selection["stages"]
    if not stages:
        return dict(note="no stage ran")
    first = [c["trial"] for c in stages[0]["candidates"]]
    k = state.config.final.fidelity_sample
    idx = np.unique(np.linspace(0, len(first) - 1, min(k, len(first))).round().astype(int)) if k and first else []
    wanted = list(dict.fromkeys([c["trial"] for c in stages[-1]["candidates"]] + [first[i] for i in idx]))
    by_number = {t.number: t for t in state.study.get_trials(deepcopy=False)}
    ppl = {}
    for n in progress_bar(wanted, desc="final: selection fidelity", unit="plan", enabled=progress, leave=False):
        ppl[n] = heldout(study_plan(state.config, by_number[n].user_attrs["plan"]))[0]

    def rho(pairs: list[tuple[float, float]]) -> float | None:
        if len(pairs) < 3:
            return None
        r = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
        return None if np.isnan(r) else float(r)

    rows = []
    for st in stages:
        pairs = [(c["value"], ppl[c["trial"]]) for c in st["candidates"] if c["trial"] in ppl]
        fast = [(c["fast"], ppl[c["trial"]]) for c in st["candidates"] if c["trial"] in ppl]
        rows.append(dict(stage=st["stage"], n=len(pairs), spearman=rho(pairs), fast_spearman=rho(fast)))
    return dict(heldout_ppl={str(n): v for n, v in ppl.items()}, stages=rows)


def zero_shot_rows(state: SearchState, rows: list[dict], *, progress: bool = True) -> None:
    """``final.zero_shot``: the zero-shot average (``zero_shot`` of the row) of every searched row
    and of the best baseline (held-out perplexity) at each searched row's target."""
    zs = state.config.final.zero_shot
    ctx = state.ctx
    suite = ZeroShotSuite(list(zs.tasks), ctx.tokenizer, limit=zs.limit, data_dir=ctx.info.get("data_dir"),
                          add_special_tokens=True if needs_bos(ctx.model) else None)
    searched = [r for r in rows if r["kind"] == "searched"]
    wanted = list(searched)
    for r in searched:
        peers = [b for b in rows if b["kind"] == "baseline" and (b.get("target") == r.get("target") if r.get("target") is not None
                                                                 else abs(b["sparsity"] - r["sparsity"]) < 0.01)]
        if peers:
            best = min(peers, key=lambda b: b["ppl"])
            if best not in wanted:
                wanted.append(best)
    for r in progress_bar(wanted, desc="final: zero-shot", unit="plan", enabled=progress):
        with ctx.applied(PruningPlan.from_dict(r["plan"])):
            result = suite.evaluate(ctx.model, batch_size=zs.batch_size, device=ctx.device, progress=False)
        r["zero_shot"] = dict(result["average"], limit=zs.limit, tasks={t: v.get("acc_norm", v.get("acc"))
                                                                         for t, v in result["tasks"].items()})


class FinalPhase(Phase):
    """The held-out comparison of the chosen plans with the named baselines (skipped by --no-final,
    which keeps an earlier run's comparison: :func:`earlier_result`)."""

    name = "final comparison"

    def applies(self, run: StudyRun) -> bool:
        return run.final

    def run(self, run: StudyRun) -> None:
        config = run.config
        log.info("final comparison on held-out %s: the chosen plans and the baselines %s", config.heldout.source,
                 ", ".join(config.final.baselines))
        run.result = final_comparison(run.delivered or run.state, polished=run.polished, selection=run.selection,
                                      first_phase=run.first_phase, progress=run.progress)
        write_text_atomic(run.out / "final.json", json.dumps(run.result, indent=2, default=str))


def earlier_result(out: Path) -> FinalResult | None:
    """The comparison an earlier run wrote (final.json), marked so, or None."""
    path = out / "final.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    result["from_earlier_run"] = True
    return result
