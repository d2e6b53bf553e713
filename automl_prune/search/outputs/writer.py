"""What a search leaves in its folder: trials.csv, best.yaml or pareto/, polished/, the plots and
report.md. Everything is rebuilt from the study (Optuna storage) and ``final.json``, so
``automl-prune report DIR`` regenerates it at any time."""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from ...atomic import atomic_file, write_text_atomic
from ...errors import UserError
from ...pruning.plan import PruningPlan
from ..study.config import load_config
from ..study.definition import Study
from ..study.results import FinalResult, polished_rows
from ..study.storage import sqlite_path
from .plots import plot_history, plot_layerwise, plot_pareto
from .report import write_report


def write_trials_csv(study: optuna.Study, out: Path) -> None:
    df = study.trials_dataframe(attrs=("number", "value" if len(study.directions) == 1 else "values", "params", "state",
                                       "duration", "user_attrs"))
    drop = [c for c in df.columns if c == "user_attrs_plan"]
    with atomic_file(out / "trials.csv") as tmp:
        df.drop(columns=drop).to_csv(tmp, index=False)


def _plan_file(plan: dict, origin: dict | None) -> PruningPlan:
    """A plan as its file records it: with the study's calibration and held-out text (``origin``)."""
    return PruningPlan.from_dict({**plan, **(origin or {})})


def write_plans(study: optuna.Study, out: Path, origin: dict | None = None, mode: str | None = None) -> list[Path]:
    """best.yaml (single objective) or pareto/trial-N.yaml (several), each with the study's ``origin``;
    ``mode``: the mode the final comparison chose to deliver the selected plan in (best.yaml)."""
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
        plan = {**best.user_attrs["plan"], **({"mode": mode} if mode else {})}
        write_text_atomic(out / "best.yaml", _plan_file(plan, origin).to_yaml())
        return [out / "best.yaml"]
    (out / "pareto").mkdir(exist_ok=True)
    for t in done:
        path = out / "pareto" / f"trial-{t.number}.yaml"
        write_text_atomic(path, _plan_file(t.user_attrs["plan"], origin).to_yaml())
        written.append(path)
    return written


def write_polished_plans(final: FinalResult | None, out: Path, origin: dict | None = None) -> list[Path]:
    """polished/sparsity-S.yaml: the polished plan of each target sparsity (from final.json)."""
    rows = polished_rows(final)
    if rows:
        (out / "polished").mkdir(exist_ok=True)
    written = []
    for r in rows:
        path = out / "polished" / f"sparsity-{r['target']:g}.yaml"
        write_text_atomic(path, _plan_file(r["plan"], origin).to_yaml())
        written.append(path)
    return written


def rebuild(out: Path) -> Path:
    """Regenerate every output of a search folder from its study and final.json."""
    definition = Study.from_config(load_config(out / "config.yaml"), out)
    config, study = definition.config, _stored(definition)
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    final = json.loads((out / "final.json").read_text()) if (out / "final.json").exists() else None
    delivered = None
    if config.allocation_search is not None and meta.get("allocation_phase"):
        delivered = optuna.load_study(study_name=meta["allocation_phase"]["study"], storage=definition.url)
    return write_outputs(study, out, [o.name for o in config.objectives], meta, final, origin=config.plan_origin(meta),
                         delivered=delivered)


def _stored(definition: Study) -> optuna.Study:
    """The study a report is rebuilt from; a UserError when its storage holds none (nothing is created)."""
    db = sqlite_path(definition.url)
    try:
        if db is None or db.is_file():  # optuna would create a missing SQLite file
            return definition.load()
    except KeyError:  # the storage exists, the study does not
        pass
    raise UserError(f"{definition.where} holds no study: nothing to report; run the search first "
                    "(automl-prune search --config FILE --out DIR)")


def write_outputs(study: optuna.Study, out: Path, names: list[str], meta: dict, final: FinalResult | None,
                  origin: dict | None = None, delivered: optuna.Study | None = None) -> Path:
    """Every output of a search folder; plan files record ``origin`` (``StudyConfig.plan_origin``).
    ``delivered``: the study whose selected plan is best.yaml (a joint plan's allocation phase;
    default ``study``)."""
    write_trials_csv(study, out)
    plans = write_plans(delivered if delivered is not None else study, out, origin,
                        mode=((final or {}).get("mode_choice") or {}).get("mode"))
    write_polished_plans(final, out, origin)
    plot_history(study, names, out)
    plot_pareto(study, names, final, out)
    if len(study.directions) == 1 and plans:
        plot_layerwise(PruningPlan.load(plans[0]), out)
    return write_report(study, out, names, meta, final)
