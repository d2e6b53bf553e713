"""The Ray executor: the same study, its trials spread over the CPUs/GPUs of a node or a cluster.

Optuna samplers run through Ray Tune (``tune.Tuner`` with ``OptunaSearch`` on the study's own
storage, so ``report`` and resume work as with the local executor); a class trainable keeps one
:class:`~automl_prune.search.worker.Worker` (model, statistics, dense references) per Ray actor and
reuses it across trials (``reuse_actors``). pymoo NSGA-III stays ask/tell in the driver and farms
each generation out to a pool of Ray actors. Statistics reach the workers through the on-disk cache
the driver fills (``cache_dir``: put it on storage every node sees for multi-node clusters).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ..errors import UserError
from ..progress import progress_bar
from .driver import SearchState, directions_of, make_sampler
from .evaluate import Outcome
from .evolution import evolution_loop
from .pymoo_driver import pymoo_loop
from .storage import storage_url, study_name
from .worker import Worker

log = logging.getLogger(__name__)
FINISHED_MARK = "finished"


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS); without either start a local Ray instance."""
    if ray.is_initialized():
        return
    where = address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=where, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot connect to the Ray cluster at {where!r}: {exc}. Start one with `ray start --head` "
                        "and pass its address (--ray-address HOST:PORT), or leave the address out for a local "
                        "instance. A cluster started with token authentication (the default of `ray start` since "
                        "Ray 2.5x) also needs RAY_AUTH_MODE=token in this command's environment and the cluster's "
                        "token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None


class CandidateTrainable(tune.Trainable):
    """One candidate per trial; the worker (model, statistics) lives as long as the actor."""

    def setup(self, config, study_config=None, storage=None, threads=None):
        self.worker = Worker(study_config, storage=storage, threads=threads)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.names = set(self.worker.space.distributions())

    def step(self):
        outcome = self.worker.evaluate({k: v for k, v in self.config.items() if k in self.names})
        values = outcome.values or [math.nan] * len(self.worker.objectives)
        metrics = {o.name: float(v) for o, v in zip(self.worker.config.objectives, values)}
        attrs = dict(outcome.attrs, ray_node_id=self.node_id)
        return {**metrics, "outcome": outcome.state, "attrs_json": json.dumps(attrs, default=str), "done": True}

    def reset_config(self, new_config):
        return True  # the loaded worker serves any candidate

    def save_checkpoint(self, checkpoint_dir):
        return None  # one step per trial: nothing to resume inside a trial (a retried trial starts again)

    def load_checkpoint(self, checkpoint):
        pass


class StudySearch(OptunaSearch):
    """OptunaSearch that also records each trial's plan, canonical key, mask hash and worker node as
    user attributes of its Optuna trial (what the reports and resume read), and fails, rather than
    prunes, trials whose candidate failed."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            # told before an interruption, re-reported by a restored run: the study already has it
            self._completed_trials.add(trial_id)
            return
        if ot_trial is not None and trial_id not in self._completed_trials:
            if result and "attrs_json" in result:
                for key, value in json.loads(result["attrs_json"]).items():
                    ot_trial.set_user_attr(key, value)
            if result and result.get("outcome") != "complete":
                result, error = None, True
            elif error:
                ot_trial.set_user_attr("error", "the worker running this trial failed (see the Ray run folder)")
        super().on_trial_complete(trial_id, result=result, error=error)


class _Progress:
    """The search bar follows the study's finished trials from a thread of the driver (not a Tune
    callback: the Tuner pickles its callbacks with its state, and a bar does not survive that)."""

    def __init__(self, bar, state: SearchState, every: float = 2.0):
        self.bar, self.state, self.every = bar, state, every
        self.start = state.finished()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def _follow(self) -> None:
        while not self.stop.wait(self.every):
            self.tick()

    def tick(self) -> None:
        try:
            self.bar.n = self.state.finished() - self.start
        except Exception:  # noqa: BLE001 - a busy storage only delays the next line
            return
        self.bar.refresh()

    def __enter__(self) -> "_Progress":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.tick()
        self.bar.close()


def _experiment(root: Path) -> tuple[str, bool]:
    """The Ray run to continue (an unfinished one) or the name of a new one."""
    runs = sorted((p for p in root.glob("run-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    if runs and not (runs[-1] / FINISHED_MARK).exists() and tune.Tuner.can_restore(str(runs[-1])):
        return runs[-1].name, True
    return f"run-{len(runs) + 1}", False


def _resources(config) -> dict:
    rc = config.ray
    return {"cpu": rc.cpus_per_trial, "gpu": rc.gpus_per_trial, **rc.resources}


def tune_loop(state: SearchState, out: Path, progress: bool = True) -> int:
    """Optuna TPE / NSGA-III / random through Ray Tune until the budget is spent; returns trials run."""
    cfg = state.config
    remaining = None if cfg.budget.trials is None else cfg.budget.trials - state.spent()
    if remaining is not None and remaining <= 0:
        return 0
    storage = storage_url(cfg, out)
    trainable = tune.with_resources(
        tune.with_parameters(CandidateTrainable, study_config=cfg.model_dump(mode="json"), storage=storage,
                             threads=max(1, int(cfg.ray.cpus_per_trial))),
        _resources(cfg))
    root = Path(cfg.ray.storage_path or out / "ray").resolve()
    root.mkdir(parents=True, exist_ok=True)
    name, restore = _experiment(root)
    bar = progress_bar(total=remaining, desc="search (ray)", unit="trial", enabled=progress)
    if restore:
        log.info("continuing the interrupted Ray run %s", root / name)
        tuner = tune.Tuner.restore(str(root / name), trainable=trainable, resume_errored=True)
    else:
        names = [o.name for o in cfg.objectives]
        modes = ["min" if d == "minimize" else "max" for d in directions_of(cfg, state.objectives)]
        one = len(names) == 1
        searcher = StudySearch(space=state.space.distributions(), metric=names[0] if one else names,
                               mode=modes[0] if one else modes, sampler=make_sampler(cfg, state.finished()), study_name=study_name(cfg),
                               storage=optuna.storages.get_storage(storage))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1 if remaining is None else remaining,
                                        max_concurrent_trials=cfg.ray.max_concurrent_trials, reuse_actors=True,
                                        time_budget_s=cfg.budget.timeout),
            run_config=tune.RunConfig(name=name, storage_path=str(root), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures)))
    with _Progress(bar, state):
        results = tuner.fit()
    for r in results:
        if r.error is not None:
            log.warning("a trial failed in Ray: %s", str(r.error).splitlines()[0] if str(r.error) else r.error)
    (root / name / FINISHED_MARK).touch()
    return len(results)


class ActorWorker(Worker):
    """The pymoo actors' worker: also records the Ray node each candidate ran on."""

    def evaluate(self, params: dict) -> Outcome:
        outcome = super().evaluate(params)
        outcome.attrs["ray_node_id"] = ray.get_runtime_context().get_node_id()
        return outcome


def actor_pool(config, storage: str, size: int) -> list:
    """``size`` Ray actors, each with a loaded worker; restarted (and their calls retried) if they die."""
    rc = config.ray
    remote = ray.remote(ActorWorker).options(num_cpus=rc.cpus_per_trial, num_gpus=rc.gpus_per_trial,
                                        resources=rc.resources or None, max_restarts=rc.max_failures,
                                        max_task_retries=rc.max_failures)
    return [remote.remote(config.model_dump(mode="json"), storage=storage, threads=max(1, int(rc.cpus_per_trial)))
            for _ in range(size)]


def evaluate_on(actors: list):
    """A batch evaluator for the pymoo loop: candidates dealt round-robin to the actors."""

    def evaluate(params_list: list[dict]) -> list[Outcome]:
        refs = [actors[i % len(actors)].evaluate.remote(p) for i, p in enumerate(params_list)]
        outcomes = []
        for ref in refs:
            try:
                outcomes.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                outcomes.append(Outcome("fail", attrs={"error": f"worker failed: {type(exc).__name__}: {first}"}))
        return outcomes

    return evaluate


def ray_loop(state: SearchState, out: Path, progress: bool = True) -> int:
    """Run the study's searcher on Ray; returns the number of trials run."""
    connect(state.config.ray.address)
    try:
        if state.config.searcher.name == "pymoo-nsga3":
            actors = actor_pool(state.config, storage_url(state.config, out), state.config.ray.max_concurrent_trials)
            before = state.finished()
            pymoo_loop(state, out, progress=progress, evaluate=evaluate_on(actors))
            return state.finished() - before
        if state.config.searcher.name == "evolution":  # generations farmed out to actors, as pymoo's
            actors = actor_pool(state.config, storage_url(state.config, out), state.config.ray.max_concurrent_trials)
            before = state.finished()
            evolution_loop(state, out, progress=progress, evaluate=evaluate_on(actors))
            return state.finished() - before
        return tune_loop(state, out, progress=progress)
    finally:
        ray.shutdown()
