"""One study as its config describes it, built once: the space, the objectives, the storage and the
study's name and directions. The CLI, the Ray workers, polishing, the allocation phase, report
rebuilds and the benchmarks all start from :meth:`Study.from_config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna

from objectives import make_objective
from search_spaces import make_space

from ...errors import UserError
from .config import StudyConfig
from .fingerprint import check_fingerprint
from .storage import masked, open_storage, storage_url, study_name


def sign_of(direction) -> float:
    """+1 for a minimised objective, -1 for a maximised one (a direction name or Optuna's
    StudyDirection): ``sign * value`` is smaller for the better candidate."""
    minimise = direction == "minimize" or direction == optuna.study.StudyDirection.MINIMIZE
    return 1.0 if minimise else -1.0


def directions_of(config: StudyConfig, objectives: list) -> list[str]:
    """Each objective's direction: the config's where it sets one, else the objective's own."""
    return [c.direction or o.direction for c, o in zip(config.objectives, objectives)]


class Directed:
    """Directions and sign of a study-like object with ``config`` and prepared ``objectives``."""

    @property
    def directions(self) -> list[str]:
        return directions_of(self.config, self.objectives)

    @property
    def sign(self) -> float:
        """``sign_of`` the first objective (the one single-objective choices rank by)."""
        return sign_of(self.directions[0])


@dataclass
class Study(Directed):
    """The study of ``config`` in the Optuna storage at ``url``. ``space`` is the config's space
    (bound to the model by setup.load_search), ``objectives`` its objectives (prepared there);
    ``early_stopping``: single-objective trials may be stopped by the median pruner."""

    config: StudyConfig
    url: str | None  # None: a study that is only scored, never stored (benchmarks)
    space: object
    objectives: list
    early_stopping: bool = field(default=True)

    @classmethod
    def from_config(cls, config: StudyConfig, out: str | Path | None = None, *, url: str | None = None,
                    objectives: list | None = None, early_stopping: bool = True) -> "Study":
        """The study of ``config`` whose storage is ``url`` (default: the config's, else SQLite in
        ``out``; neither: a study that is never stored)."""
        if url is None and (out is not None or config.storage is not None):
            url = storage_url(config, Path(out or "."))
        if objectives is None:
            objectives = [make_objective(o.name, **o.params) for o in config.objectives]
        return cls(config, url, make_space(config.space), objectives, early_stopping)

    @property
    def name(self) -> str:
        return study_name(self.config)

    @property
    def where(self) -> str:
        """How messages name the study: its storage (password masked) and its name."""
        return f"the storage {masked(self.url or '(none)')} (study {self.name!r})"

    def load(self) -> optuna.Study:
        """The study as it is in the storage (reports, workers reading values measured before)."""
        return optuna.load_study(study_name=self.name, storage=self.url)

    def open(self) -> optuna.Study:
        """Create the study, or load it when it exists (resume): its directions, objectives and
        fingerprint (fingerprint.py) must match the config's. Called by the driver that holds the study's lock (lock.py)."""
        storage = open_storage(self.url)
        directions = self.directions
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
                  if len(directions) == 1 and self.early_stopping else optuna.pruners.NopPruner())
        try:
            study = optuna.create_study(storage=storage, study_name=self.name, directions=directions,
                                        sampler=optuna.samplers.RandomSampler(), pruner=pruner, load_if_exists=True)
        except ValueError as exc:
            raise UserError(f"cannot open the study in {self.where}: {exc}") from None
        have = [d.name.lower() for d in study.directions]
        if have != directions:
            raise UserError(f"{self.where} has directions {have}, but the config asks for {directions}; "
                            "use another --out folder or study_name")
        names = [o.name for o in self.config.objectives]
        stored = study.user_attrs.get("objectives")
        if stored is None:
            study.set_user_attr("objectives", names)
        elif stored != names:
            raise UserError(f"{self.where} was run with objectives {stored}, not {names}; use another --out folder or "
                            "study_name")
        check_fingerprint(study, self.config, self.where)
        return study  # its sampler is set by the study's searcher (searchers.py)
