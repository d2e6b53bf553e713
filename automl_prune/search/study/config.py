"""The study configuration: validated completely before any model is loaded.

A config is YAML; unknown fields, wrong types, unknown spaces/objectives/searchers and impossible
sparsities fail with a message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from objectives import make_objective
from search_spaces import make_space

from ...data.settings import Calibration, Heldout
from ...errors import UserError
from ...evaluation.zeroshot import parse_tasks
from ...pruning.methods import BASELINES
from ...pruning.plan import AdmmOptions, DsnotOptions, Refine, Update
from .recipe import RecipeConfig
from .recipe import sections as recipe_sections
from .searcher_configs import EvolutionConfig, SearcherConfig, TPEConfig, own_settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProbeConfig(_Strict):
    """Windows the fast objectives run on: calibration-domain text drawn with another seed."""

    source: str | None = None  # None: the calibration source
    nsamples: int = Field(8, ge=1)
    seqlen: int = Field(512, ge=8)
    seed: int = 1


class ObjectiveConfig(_Strict):
    name: str
    direction: Literal["minimize", "maximize"] | None = None  # None: the objective's own
    params: dict[str, Any] = {}


class BudgetConfig(_Strict):
    trials: int | None = Field(60, ge=1)
    timeout: float | None = Field(None, gt=0)  # seconds of search

    @model_validator(mode="after")
    def _some(self) -> "BudgetConfig":
        if self.trials is None and self.timeout is None:
            raise ValueError("give budget.trials, budget.timeout or both")
        return self


class ZeroShotFinal(_Strict):
    """Zero-shot accuracy (lm-eval prompts and metrics, built-in scorer) of each chosen plan and of
    the best baseline at its target, on the first ``limit`` documents of each task."""

    tasks: list[str] | str = "all"
    limit: int | None = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        try:
            return parse_tasks(v if isinstance(v, str) else ",".join(v))
        except UserError as exc:
            raise ValueError(str(exc)) from None


class ModeChoice(_Strict):
    """With several ``final.modes``: the selected plan is applied in each mode (one-shot: every block
    from the dense model's statistics; sequential: block by block, each on the already pruned earlier
    blocks) and the mode that scores best by ``objective`` on ``tokens`` fresh calibration-domain
    tokens (seed ``seed``; overlapping no calibration or probe window, never the held-out text) is
    the one the plan files record. The baselines are compared in every mode too."""

    tokens: int = Field(16384, ge=2)
    seed: int = 300
    objective: ObjectiveConfig | None = None  # default: the selection's objective, else KL (topk 512)


class FinalConfig(_Strict):
    """The closing comparison on held-out text."""

    baselines: list[str] = ["magnitude", "wanda", "ria", "stade", "bawa"]
    top: int = Field(1, ge=0)  # best plans (single objective) or Pareto points evaluated
    fidelity_sample: int = Field(8, ge=0)  # trials re-evaluated on held-out text for Spearman
    export_best: bool = False  # also write the pruned best model as an HF folder
    zero_shot: ZeroShotFinal | None = None  # also zero-shot accuracy of the chosen plans and the best baseline
    modes: list[Literal["one-shot", "sequential"]] = Field(["one-shot"], min_length=1)  # see ModeChoice
    mode_choice: ModeChoice = ModeChoice()


class StageConfig(_Strict):
    """One selection stage: every candidate it scores reads the same ``tokens`` fresh tokens; the
    ``keep`` best go on to the next stage."""

    tokens: int = Field(ge=2)
    keep: int = Field(ge=1)
    # the mode the stage applies its candidates in: sequential scores each as it would be delivered
    # when applied block by block on the pruned earlier blocks (slower: a sequential prune per candidate)
    mode: Literal["one-shot", "sequential"] = "one-shot"


class StageReconstruction(_Strict):
    """The weight update (and mask refinement) the selection stages add to every candidate they
    score: the expensive part of a metric x update plan paid only by the fast objective's best
    (EvoPress pays it per layer in its database; here per survivor). The plan the study delivers
    (selected plan, final comparison, best.yaml) carries it too."""

    update: Update = "admm"
    refine: Refine = "none"
    admm: AdmmOptions = AdmmOptions(gradual=True)
    dsnot: DsnotOptions = DsnotOptions()

    def plan_fields(self) -> dict:
        out: dict = {"update": self.update, "refine": self.refine}
        if self.update == "admm":
            out["admm"] = self.admm.model_dump()
        if self.refine == "dsnot":
            out["dsnot"] = self.dsnot.model_dump()
        return out


class SelectionConfig(_Strict):
    """Multi-fidelity selection (EvoPress's multi-step selection) after the search: the fast
    objective's ``candidates`` best distinct trials, and the named points, are scored by
    ``objective`` on the first stage's tokens; its ``keep`` best go on to the next stage on more
    tokens, and so on; the last stage's best is the selected plan. Each stage reads windows drawn
    fresh (seed ``seed + stage``) from the calibration source that overlap none of the calibration
    and probe windows (never the held-out text); every candidate of a stage reads the same windows
    (paired comparisons); the dense reference is computed once per stage. Stage values are kept in
    the study, so a re-run scores only what is missing."""

    stages: list[StageConfig] = Field(min_length=1)
    objective: ObjectiveConfig = ObjectiveConfig(name="kl", params={"topk": 512})
    candidates: int = Field(32, ge=1)
    seqlen: int | None = Field(None, ge=8)  # tokens per window (default: the probe's seqlen)
    seed: int = 100
    reconstruction: StageReconstruction | None = None  # update paid by the survivors only (see StageReconstruction)

    @model_validator(mode="after")
    def _stages(self) -> "SelectionConfig":
        tokens = [s.tokens for s in self.stages]
        keep = [s.keep for s in self.stages]
        if any(b <= a for a, b in zip(tokens, tokens[1:])):
            raise ValueError(f"stages must read more tokens each: {tokens}")
        if any(b >= a for a, b in zip(keep, keep[1:])):
            raise ValueError(f"stages must keep fewer candidates each: {keep}")
        if keep[0] > self.candidates:
            raise ValueError(f"the first stage keeps {keep[0]} of {self.candidates} candidates; raise candidates")
        if "windows" in self.objective.params or "seqlen" in self.objective.params:
            raise ValueError("the stages decide the windows the objective reads: drop objective.params windows/seqlen")
        return self


class PolishConfig(_Strict):
    """Per-point polishing of a sparsity front: at each target sparsity in ``points``, a short
    single-objective TPE over the same space with the sparsity fixed, scored by ``objective``
    (slower and more faithful than the front's), started from the named methods and the front's
    best trials at that target. The final comparison then evaluates the polished plans.

    With ``selection`` the point's plan is chosen the way a study's is (``SelectionConfig``): its
    ``candidates`` best distinct trials and the named points scored in stages on fresh tokens, the
    last stage's best is the polished plan (the point's study keeps the stage values)."""

    points: list[float] = Field(min_length=1)
    trials: int = Field(12, ge=1)  # per point, enqueued starting points included
    objective: ObjectiveConfig = ObjectiveConfig(name="kl", params={"windows": 4})
    front: int = Field(3, ge=0)  # best front trials at each target enqueued as starting points
    space: dict[str, Any] | None = None  # None: the front's space (its pattern is replaced by the target)
    seed: int = 0
    n_startup_trials: int = Field(4, ge=0)
    selection: SelectionConfig | None = None  # multi-fidelity choice among the point's best (see above)

    @field_validator("points")
    @classmethod
    def _points(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < p < 1.0 for p in v):
            raise ValueError(f"points must lie in (0, 1), got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"points repeat a value: {v}")
        return sorted(v)


class AllocationSearchConfig(_Strict):
    """A second phase of the study (search/phases/allocation.py): the plan the first phase selected
    (metric, pattern, and the update of ``selection.reconstruction``) starts EvoPress's evolution of
    the per-layer allocation over a level database built from that plan, in the study
    ``<study>-allocation`` of the same storage. Metric x update is paid by the first phase's
    survivors only, allocation x update by the database: the joint plan in one study."""

    allocation: dict[str, Any] = {"name": "levels", "levels": 5, "base": "owl", "M": 5, "lambda": 0.08}
    searcher: SearcherConfig = EvolutionConfig(offspring=16, survivors=3, stage_tokens=2048, stage_pool=16)
    objective: ObjectiveConfig | None = None  # the evolution's fitness; None: the study's objective
    budget: BudgetConfig = BudgetConfig(trials=3000, timeout=2700)

    @field_validator("allocation")
    @classmethod
    def _levels(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("name") != "levels":
            raise ValueError("the allocation phase searches per-layer levels: give {name: levels, levels: 5, base: owl}")
        return v

    @field_validator("searcher", mode="before")
    @classmethod
    def _own_settings(cls, v):
        return own_settings(v)

    @field_validator("searcher")
    @classmethod
    def _evolution(cls, v: SearcherConfig) -> SearcherConfig:
        if v.name != "evolution":
            raise ValueError("the allocation phase is searched by the evolution (level-switch mutation): name: evolution")
        return v


class RayConfig(_Strict):
    """The Ray executor: where to run, how many workers, and what each worker asks for."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray instance is started
    cpus_per_trial: float = Field(1.0, ge=0)
    gpus_per_trial: float = Field(0.0, ge=0)  # fractional for small models (several trials per GPU)
    resources: dict[str, float] = {}  # custom Ray resources per trial, e.g. {"big_node": 1}
    max_concurrent_trials: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=0)  # restarts of a worker that died (its candidates are retried)

    @model_validator(mode="before")
    @classmethod
    def _no_run_folder(cls, v):
        if isinstance(v, dict) and "storage_path" in v:
            if v["storage_path"] is not None:
                raise ValueError("storage_path is no longer used: trials live in the study's Optuna storage (storage:), "
                                 "which a re-run resumes; remove it")
            v = {k: x for k, x in v.items() if k != "storage_path"}
        return v


class StudyConfig(_Strict):
    """One search: model and data, the space, the objectives, the searcher and the budget."""

    model: str = "smollm2-135m"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"
    # where the decoder blocks' weights live: on the device (none), in host memory or in memory-mapped
    # files, one block on the device at a time (candidates streamed block by block: candidate_stream.py)
    offload: Literal["none", "cpu", "disk"] = "none"
    offload_folder: str | None = None  # where disk offload writes what it changes (default: a temporary folder)
    memory_check: bool = True  # refuse a study the memory model says will not fit (models/memory_model.py)
    data_dir: str | None = None
    cache_dir: str | None = None
    calibration: Calibration = Calibration()
    probe: ProbeConfig = ProbeConfig()
    heldout: Heldout = Heldout()

    space: dict[str, Any] = {"metric": {"name": "bawa"}, "allocation": {"name": "uniform"},
                             "pattern": {"name": "unstructured", "sparsity": 0.5}}
    objectives: list[ObjectiveConfig] = [ObjectiveConfig(name="layer_recon")]
    searcher: SearcherConfig = TPEConfig()
    budget: BudgetConfig = BudgetConfig()
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig = RayConfig()
    storage: str | None = None  # Optuna storage URL; default sqlite:///<out>/study.db
    study_name: str | None = None
    final: FinalConfig = FinalConfig()
    polish: PolishConfig | None = None  # sparsity fronts only: see PolishConfig
    selection: SelectionConfig | None = None  # multi-fidelity selection after the search: see SelectionConfig
    allocation_search: AllocationSearchConfig | None = None  # the joint plan's allocation phase: see AllocationSearchConfig
    recipe: RecipeConfig | None = None  # the built-in recipe the other sections came from (recipe.py)

    def plan_origin(self, meta: dict | None = None) -> dict:
        """What every plan file of this study records of where it came from: the calibration (so
        ``prune --plan`` computes the statistics the plan was scored on), the held-out text and,
        from the run's ``meta`` (meta.json), the model the plans were made for."""
        data_dir = str(Path(self.data_dir).resolve()) if self.data_dir else None
        model = (meta or {}).get("plan_model")
        return {"calibration": {**self.calibration.model_dump(), "data_dir": data_dir},
                "heldout": self.heldout.model_dump(), **({"model": model} if model else {}), **self.stage_fields()}

    def stage_fields(self) -> dict:
        """The plan fields the selection stages add to every candidate (``selection.reconstruction``):
        part of every plan this study delivers."""
        recon = self.selection.reconstruction if self.selection is not None else None
        return recon.plan_fields() if recon is not None else {}

    @field_validator("searcher", mode="before")
    @classmethod
    def _own_settings(cls, v):
        return own_settings(v)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[ObjectiveConfig]) -> list[ObjectiveConfig]:
        if not v:
            raise ValueError("at least one objective is needed")
        names = [o.name for o in v]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a name: {names}")
        return v


def _first_error(exc: ValidationError, within: str | None = None) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in ((within,) if within else ()) + tuple(err["loc"])) or "config"
    return f"field '{where}': {err['msg'].removeprefix('Value error, ')}"


EXTENDS = "extends"  # the overlay key: this config is its base's settings with its own on top
PRESETS = "automl_prune.presets"  # the package's configs (automl_prune/presets/<name>.yaml)


def preset(name: str):
    """The packaged config ``name`` (automl_prune/presets/<name>.yaml), read with importlib.resources
    so that an installed wheel finds it."""
    from importlib.resources import files

    return files(PRESETS) / f"{name}.yaml"


def preset_names() -> list[str]:
    from importlib.resources import files

    return sorted(p.name.removesuffix(".yaml") for p in files(PRESETS).iterdir() if p.name.endswith(".yaml"))


def _read_mapping(source) -> dict[str, Any]:
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {source} must hold a mapping")
    return data


def _base_of(source, ref) -> Any:
    """The file ``extends: ref`` of ``source`` names: a path (it holds a '/' or ends in .yaml)
    relative to ``source``'s folder; a bare name is ``<name>.yaml`` next to ``source``, else the
    preset ``name``."""
    where = f"config file {source}: field '{EXTENDS}'"
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"{where} must name the config it extends (a preset name or a path relative to this file), "
                        f"not {ref!r}")
    folder = source.parent
    if "/" in ref or "\\" in ref or ref.endswith((".yaml", ".yml")):
        given = Path(ref).expanduser()
        base = given if given.is_absolute() else folder / ref
        if base.is_file():
            return base
        raise UserError(f"{where}: the config it extends, {base}, does not exist")
    for base in (folder / f"{ref}.yaml", preset(ref)):
        if base.is_file():
            return base
    raise UserError(f"{where}: no config {ref!r}: neither {ref}.yaml next to it nor a preset of that name "
                    f"(presets: {', '.join(preset_names())})")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve(source, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings of the config file ``source`` with its ``extends`` chain resolved."""
    key = str(source.resolve()) if isinstance(source, Path) else str(source)
    if key in chain:
        loop = " -> ".join(Path(k).name for k in (*chain[chain.index(key):], key))
        raise UserError(f"config file {Path(chain[0]).name}: '{EXTENDS}' makes a cycle: {loop}")
    data = _read_mapping(source)
    ref = data.pop(EXTENDS, None)
    if ref is None:
        return data
    return _merge(_resolve(_base_of(source, ref), (*chain, key)), data)


def load_config(path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study config (with dotted-key overrides such as ``budget.trials``).

    ``path``: a file (str or Path), a packaged config (``preset(name)``) or None (the defaults). A
    config may extend another (``extends: NAME-OR-PATH``, resolved by ``_base_of``): the base's
    settings with the config's own merged on top (mappings key by key, lists replaced), bases of
    bases included; the result is one complete config, the one a run folder's config.yaml records."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path) if isinstance(path, str) else path
        if not p.is_file():
            raise UserError(f"config file {p} does not exist")
        data = _resolve(p)
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if data.get("recipe"):  # the recipe's sections under the config's own settings (recipe.py)
        try:
            recipe = RecipeConfig.model_validate(data["recipe"])
        except ValidationError as exc:
            raise UserError(f"invalid config{' ' + str(path) if path else ''}: {_first_error(exc, 'recipe')}") from None
        data = _merge(recipe_sections(recipe), data)
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"invalid config{' ' + str(path) if path else ''}: {_first_error(exc)}") from None
    _check_names(config)
    return config


def _check_names(config: StudyConfig) -> None:
    """Spaces and objectives by name, checked without loading a model."""
    make_space(config.space)
    for i, o in enumerate(config.objectives):
        _check_probe_windows(config, make_objective(o.name, **o.params), f"objectives[{i}].params.windows")
    if config.polish is not None:
        pattern = (config.space.get("pattern") or {}).get("name")
        if pattern != "sparsity":
            raise UserError("invalid config: field 'polish': polishing needs the sparsity as a decision variable "
                            f"(space.pattern.name: sparsity), not pattern {pattern!r}; remove 'polish' or change the pattern")
        if config.polish.space is not None:
            try:
                make_space({**config.polish.space, "pattern": {"name": "unstructured", "sparsity": 0.5}})
            except UserError as exc:
                raise UserError(f"invalid config: field 'polish.space': {exc}") from None
        polish = make_objective(config.polish.objective.name, **config.polish.objective.params)
        _check_probe_windows(config, polish, "polish.objective.params.windows")
        if config.polish.selection is not None:
            _check_stages(config, config.polish.selection, "polish.selection", config.polish.space or config.space)
    if config.selection is not None:
        _check_selection(config)
    _check_evolution(config)
    _check_offload(config)
    if config.allocation_search is not None:
        _check_allocation_search(config)
    unknown = [b for b in config.final.baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"invalid config: field 'final.baselines': unknown methods {unknown}; choose from {', '.join(BASELINES)}")


def _check_probe_windows(config: StudyConfig, objective, field: str) -> None:
    n = objective.probe_windows_read()
    if n is not None and n > config.probe.nsamples:
        raise UserError(f"invalid config: field '{field}': objective {objective.name!r} reads {n} probe windows but the "
                        f"probe has {config.probe.nsamples} (probe.nsamples); raise probe.nsamples or lower {field}")


def on_windows(objective: ObjectiveConfig, windows: int) -> ObjectiveConfig:
    """The same objective read on the first ``windows`` probe windows."""
    return objective.model_copy(update={"params": {**objective.params, "windows": windows}})


def selection_seqlen(config: StudyConfig, tokens: int, selection: "SelectionConfig | None" = None) -> tuple[int, int]:
    """(windows, seqlen) of a selection stage reading ``tokens`` tokens (of ``selection``, default
    the study's)."""
    selection = selection if selection is not None else config.selection
    seqlen = min((selection.seqlen if selection is not None else None) or config.probe.seqlen, tokens)
    return tokens // seqlen, seqlen


def _check_offload(config: StudyConfig) -> None:
    """What a block-streamed study (offload: cpu | disk) cannot do yet, refused before anything loads."""
    if config.offload == "none":
        return
    alloc = (config.space.get("allocation") or {})
    alloc = alloc if isinstance(alloc, str) else alloc.get("name")
    why = None
    if config.searcher.name == "evolution" or alloc == "levels" or config.allocation_search is not None:
        why = "the level database (evolution searcher, levels allocation, allocation_search) holds every layer's pruned levels"
    elif config.final.zero_shot is not None:
        why = "zero-shot tasks run the whole model (final.zero_shot)"
    else:  # each objective says whether it can score a streamed model
        why = next(filter(None, (make_objective(o.name, **o.params).not_streamable() for o in config.objectives)), None)
    if why is not None:
        raise UserError(f"invalid config: field 'offload': {config.offload!r} offload streams the model block by block, "
                        f"and {why}; use offload: none for this study")


def _check_evolution(config: StudyConfig) -> None:
    """The evolution searcher and the levels allocation go together (one objective, fixed target)."""
    alloc = (config.space.get("allocation") or {})
    alloc = alloc if isinstance(alloc, str) else alloc.get("name")
    evo = config.searcher.name == "evolution"
    if evo and alloc != "levels":
        raise UserError("invalid config: field 'searcher.name': the evolution searcher mutates per-layer levels; "
                        "use space.allocation: {name: levels, levels: 8} (or another searcher)")
    if alloc == "levels" and not evo:
        raise UserError("invalid config: field 'space.allocation': the levels allocation is searched by level-switch "
                        "mutation (exact total sparsity); use searcher: {name: evolution}")
    if evo and len(config.objectives) != 1:
        raise UserError("invalid config: field 'objectives': the evolution searcher takes one objective (its fitness)")
    if evo:
        _check_stage_tokens(config, "searcher.stage_tokens")


def _check_stage_tokens(config: StudyConfig, field: str) -> None:
    """The evolution's second stage (``config.searcher``, in the study ``config`` it runs in) reads
    whole windows."""
    tokens = config.searcher.stage_tokens
    if tokens is None:
        return
    _, seqlen = selection_seqlen(config, tokens)
    if tokens % seqlen:
        raise UserError(f"invalid config: field '{field}': {tokens} is not a whole number of windows of {seqlen} tokens; "
                        f"use a multiple of {seqlen}")


def _check_selection(config: StudyConfig) -> None:
    """One search objective, the stages checked, an update not applied twice."""
    sel = config.selection
    if len(config.objectives) != 1:
        hint = "; a sparsity front chooses per point: polish.selection" if config.polish is not None else ""
        raise UserError("invalid config: field 'selection': multi-fidelity selection chooses among the candidates of "
                        f"one objective; this study has several{hint}")
    _check_stages(config, sel, "selection", config.space)


def _check_stages(config: StudyConfig, sel: "SelectionConfig", field: str, space: dict) -> None:
    """A selection objective that reads probe windows, whole windows per stage, an update not
    applied twice (``space``: the space whose candidates the stages score)."""
    if sel.reconstruction is not None:
        recon = space.get("reconstruction") or {}
        searched = [k for k in ("update", "refine") if any(v != "none" for v in (recon.get(k) or ["none"]))]
        if searched or config.searcher.name == "evolution":
            what = f"space.reconstruction searches {', '.join(searched)}" if searched else "the evolution's level database holds the update"
            raise UserError(f"invalid config: field '{field}.reconstruction': {what}; the stages would update the candidates "
                            f"a second time. Use one of the two: remove {field}.reconstruction, or search without an update")

    try:
        objective = make_objective(sel.objective.name, **{**sel.objective.params, "windows": 1})
    except UserError:
        objective = None
    if objective is None or objective.probe_windows_read() != 1:
        raise UserError(f"invalid config: field '{field}.objective': {sel.objective.name!r} does not read probe "
                        "windows; use kl, calib_ppl or model_recon")
    for i, stage in enumerate(sel.stages):
        _, seqlen = selection_seqlen(config, stage.tokens, sel)
        if stage.tokens % seqlen:
            raise UserError(f"invalid config: field '{field}.stages[{i}].tokens': {stage.tokens} is not a whole "
                            f"number of windows of {seqlen} tokens; use a multiple of {seqlen}")


def _check_allocation_search(config: StudyConfig) -> None:
    """The allocation phase follows a single-objective search of unstructured plans at a fixed
    target, not an evolution (that one already searches the allocation) and not a front."""
    field = "invalid config: field 'allocation_search'"
    if config.searcher.name == "evolution":
        raise UserError(f"{field}: the searcher is already the evolution over levels; remove allocation_search")
    if len(config.objectives) != 1 or config.polish is not None:
        raise UserError(f"{field}: the allocation phase starts from one selected plan; use one objective and no polish")
    pattern = config.space.get("pattern") or {}
    if pattern.get("name") != "unstructured":
        raise UserError(f"{field}: per-layer sparsities need an unstructured pattern at a fixed target "
                        f"(space.pattern.name: unstructured), not {pattern.get('name')!r}")
    phase = config.allocation_search
    try:
        make_space({**config.space, "allocation": phase.allocation})
    except UserError as exc:
        raise UserError(f"{field}.allocation: {exc}") from None
    recon = config.selection.reconstruction if config.selection is not None else None
    if recon is not None and recon.refine == "dsnot" and recon.dsnot != DsnotOptions():
        raise UserError(f"{field}: the level database refines with DSnoT's default settings; drop "
                        "selection.reconstruction.dsnot or the allocation phase")
    objective = phase.objective or config.objectives[0]
    _check_probe_windows(config, make_objective(objective.name, **objective.params), "allocation_search.objective.params.windows")
    # the phase runs as a study without a selection (allocation_phase.phase_config)
    _check_stage_tokens(config.model_copy(update={"selection": None, "searcher": phase.searcher}),
                        "allocation_search.searcher.stage_tokens")
