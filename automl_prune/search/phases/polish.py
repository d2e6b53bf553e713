"""Per-point polishing of a sparsity front.

A sparsity-vs-error front is searched with a fast objective over a wide sparsity range; near any
one sparsity the candidates differ by fractions of a percent of perplexity, finer than the fast
objective resolves. Polishing takes each target sparsity in ``polish.points`` and runs a short
single-objective TPE over the same space with the sparsity fixed, scored by a slower and more
faithful objective (default: KL to the dense model on probe windows). It starts from the named
methods at that sparsity (uniform Wanda among them, so it never ends worse than Wanda on its own
objective) and from the front's best trials at that target. Each point is its own Optuna study in
the search's storage (``<study>-polish-<s>``), so a re-run resumes it.

With ``polish.selection`` the point's plan is chosen as a study's is (``selection.py``, one
mechanism): the point's best distinct candidates and the named points (uniform Wanda among them)
scored in stages on fresh calibration-domain tokens, the last stage's best is the polished plan (at
low sparsity the whole space sits within a fraction of a percent of Wanda, and the short TPE's best
on few probe tokens is partly their noise). The stage values live in the point's study.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from objectives import make_objective
from search_spaces.base import check_params

from ...errors import UserError
from ..execution.evaluators import LocalEvaluator
from ..searchers.registry import make_searcher
from ..study.config import BudgetConfig
from ..study.definition import Study, sign_of
from ..study.results import PolishResult
from ..study.searcher_configs import TPEConfig
from ..study.state import SearchState
from ..study.storage import study_name
from .base import Phase, StudyRun, running_total
from .search import search_loop
from .selection import run_selection, study_plan

log = logging.getLogger(__name__)


def polish_study_name(config, point: float) -> str:
    return f"{study_name(config)}-polish-{point:g}"


def front_starts(study: optuna.Study, point: float, k: int, space=None) -> list[tuple[int, dict]]:
    """The ``k`` best (first objective, in its direction) front-study trials whose target sparsity is ``point``:
    their parameters without the sparsity, ready to enqueue in the fixed-sparsity space (only
    those that are points of ``space`` when it is given)."""
    def fits(params: dict) -> bool:
        try:
            check_params(space, params)
        except ValueError:
            return False
        return True

    if k == 0:
        return []
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if abs(t.params.get("pattern.sparsity", -1.0) - point) < 1e-9]
    sign = sign_of(study.directions[0])
    done.sort(key=lambda t: sign * t.values[0])  # best first, whichever way the first objective goes
    out, seen = [], set()
    for t in done:
        params = {k_: v for k_, v in t.params.items() if k_ != "pattern.sparsity"}
        key = tuple(sorted(params.items()))
        if key not in seen and (space is None or fits(params)):
            seen.add(key)
            out.append((t.number, params))
        if len(out) == k:
            break
    return out


def check_polish_studies(config, url: str) -> None:
    """Before any model is loaded: polishing studies already in the storage must have been run with
    the configured objective (their values are not mixed with another objective's)."""
    if config.polish is None:
        return
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(url, include_best_trial=False)}
    wanted = config.polish.objective.model_dump(mode="json")
    for point in config.polish.points:
        summary = existing.get(polish_study_name(config, point))
        if summary is not None and summary.n_trials and summary.user_attrs.get("objective") != wanted:
            raise UserError(f"the polishing study {summary.study_name!r} was run with objective "
                            f"{summary.user_attrs.get('objective')}, not {wanted}; use another --out folder or study_name")


def point_config(config, point: float):
    """One point's polishing as a study config of its own: TPE over the (polishing) space with the
    sparsity fixed at ``point``, the polishing objective, ``polish.trials`` trials, and
    ``polish.selection`` as its selection."""
    cfg = config.polish
    base = cfg.space if cfg.space is not None else config.space
    return config.model_copy(update=dict(
        space={**base, "pattern": {"name": "unstructured", "sparsity": point}}, objectives=[cfg.objective],
        searcher=TPEConfig(seed=cfg.seed, n_startup_trials=cfg.n_startup_trials), selection=cfg.selection, polish=None,
        budget=BudgetConfig(trials=cfg.trials, timeout=None), study_name=polish_study_name(config, point)))


def polish_point(state: SearchState, point: float, objective, url: str) -> PolishResult:
    """Polish one target sparsity; returns the best trial's plan and values, and Wanda's. With
    ``polish.selection`` the best is the one its stages select."""
    cfg = state.config.polish
    definition = Study.from_config(point_config(state.config, point), url=url, objectives=[objective],
                                   early_stopping=False)
    space = definition.space.bind(state.profile)
    study = definition.open()
    new = not study.trials
    if new:
        study.set_user_attr("objective", cfg.objective.model_dump(mode="json"))
        study.set_user_attr("target_sparsity", point)
    # the point's own study on the search loop: TPE from the named methods and the front's best
    # trials at this sparsity; its selection is polish.selection (the stage values live in this study)
    sub = SearchState(config=definition.config, study=study, space=space, profile=state.profile, objectives=[objective],
                      ctx=state.ctx, progress=state.progress, repeats_cost=True)
    searcher = make_searcher(sub)  # the named points first, in a new study
    if new:
        for number, params in front_starts(state.study, point, cfg.front, space):
            study.enqueue_trial(params, user_attrs={"front_trial": number}, skip_if_exists=True)
    with LocalEvaluator(sub) as evaluator:
        search_loop(sub, searcher, evaluator, label=f"polish {point:g}", leave=False)
    name = definition.name
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "plan" in t.user_attrs]
    if not complete:
        return dict(point=point, study=name, trials=len(study.trials), best=None, note="no trial completed")
    sign = sign_of(objective.direction)
    best = min(complete, key=lambda t: sign * t.value)
    wanda = next((t for t in complete if t.user_attrs.get("named_point") == "wanda"), None)
    selection = run_selection(sub, progress=state.progress) if cfg.selection is not None else None
    if selection is not None:
        best = next(t for t in complete if t.number == selection["selected"])
    return dict(point=point, study=name, trials=len(study.trials), new_trials=sub.new_trials, objective=objective.name,
                best=dict(trial=best.number, value=best.value, plan=study_plan(sub.config, best.user_attrs["plan"]).to_dict(),
                          params=best.params, named_point=best.user_attrs.get("named_point"), front_trial=best.user_attrs.get("front_trial")),
                wanda=None if wanda is None else dict(trial=wanda.number, value=wanda.value),
                **({} if selection is None else dict(selection=selection)))


def polish_front(state: SearchState, url: str) -> list[PolishResult]:
    """Polish every point of ``config.polish`` (a no-op without it)."""
    cfg = state.config.polish
    if cfg is None:
        return []
    objective = make_objective(cfg.objective.name, **cfg.objective.params)
    objective.prepare(state.ctx)
    results = []
    for point in cfg.points:
        result = polish_point(state, point, objective, url)
        best = result.get("best") or {}
        log.info("polish %.2f: best %s = %s (trial %s), wanda %s", point, objective.name, best.get("value"),
                 best.get("trial"), (result.get("wanda") or {}).get("value"))
        results.append(result)
    state.ctx.restore()
    return results


class PolishPhase(Phase):
    """Polishing of a sparsity front's points (``polish:``), before the final comparison."""

    name = "polish"

    def check(self, config, url: str) -> None:
        check_polish_studies(config, url)

    def applies(self, run: StudyRun) -> bool:
        return run.final

    def run(self, run: StudyRun) -> None:
        run.polished = polish_front(run.state, run.url)

    def record(self, run: StudyRun, seconds: float) -> dict:
        if not run.polished:
            return {}
        seconds = round(seconds, 1)
        return dict(polish_seconds=seconds, polish_seconds_total=running_total(run.before, "polish_seconds", seconds))
