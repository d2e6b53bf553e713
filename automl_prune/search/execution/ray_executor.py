"""The Ray evaluator: the same study, its trials scored by a pool of Ray workers over the CPUs/GPUs
of a node or a cluster.

Each worker is a Ray actor holding one :class:`~automl_prune.search.execution.worker.Worker` (model,
statistics, dense references loaded once) that scores any number of candidates; a batch the
searcher asks is dealt to the workers round-robin and its outcomes come back in order, so the loop,
the searchers, resume and the reports are those of the local executor. A worker that dies is
restarted and its candidates retried (``ray.max_failures``), then the trial fails. Statistics
reach the workers through the on-disk cache the driver fills (``cache_dir``: put it on storage
every node sees for multi-node clusters), values measured before through the study's storage.
"""

from __future__ import annotations

import logging
import os

import ray

from ...errors import UserError
from ..study.outcome import Outcome
from ..study.state import SearchState
from .evaluators import heartbeats
from .worker import Worker

log = logging.getLogger(__name__)


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS); without either start a local Ray instance.
    Returns whether this call connected (False: Ray was already initialised by the caller)."""
    if ray.is_initialized():
        return False
    where = address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=where, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot connect to the Ray cluster at {where!r}: {exc}. Start one with `ray start --head` "
                        "and pass its address (--ray-address HOST:PORT), or leave the address out for a local "
                        "instance. A cluster started with token authentication (the default of `ray start` since "
                        "Ray 2.5x) also needs RAY_AUTH_MODE=token in this command's environment and the cluster's "
                        "token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    return True


class ActorWorker(Worker):
    """A worker in a Ray actor: also records the Ray node each candidate ran on."""

    def evaluate(self, params: dict) -> Outcome:
        outcome = super().evaluate(params)
        outcome.attrs["ray_node_id"] = ray.get_runtime_context().get_node_id()
        return outcome


class RayEvaluator:
    """``ray.max_concurrent_trials`` workers, each with ``cpus_per_trial`` / ``gpus_per_trial`` /
    ``resources``; started on entry (joining the cluster), shut down on exit."""

    def __init__(self, state: SearchState, url: str):
        self.state, self.url = state, url
        self.slots = state.config.ray.max_concurrent_trials
        self.actors: list = []
        self.connected = False

    def __enter__(self) -> "RayEvaluator":
        rc = self.state.config.ray
        self.connected = connect(rc.address)
        remote = ray.remote(ActorWorker).options(num_cpus=rc.cpus_per_trial, num_gpus=rc.gpus_per_trial,
                                                 resources=rc.resources or None, max_restarts=rc.max_failures,
                                                 max_task_retries=rc.max_failures)
        config = self.state.config.model_dump(mode="json")
        self.actors = [remote.remote(config, storage=self.url, threads=max(1, int(rc.cpus_per_trial)))
                       for _ in range(self.slots)]
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.connected:
            ray.shutdown()

    def evaluate(self, trials: list, *, stoppable: bool = False) -> list[Outcome]:
        """The batch dealt round-robin to the workers (no early stopping on Ray: every trial runs to its end)."""
        with heartbeats(self.state.study, trials):
            refs = [self.actors[i % len(self.actors)].evaluate.remote(t.params) for i, t in enumerate(trials)]
            outcomes = []
            for ref in refs:
                try:
                    outcomes.append(ray.get(ref))
                except ray.exceptions.RayError as exc:
                    first = (str(exc).strip().splitlines() or [""])[0][:300]
                    outcomes.append(Outcome("fail", attrs={"error": f"worker failed: {type(exc).__name__}: {first}"}))
        return outcomes
