"""Each searcher's own validated settings: a union discriminated by ``name`` (as the spaces are).

A setting given to a searcher it does not apply to is refused with the searchers it applies to.
Configs written before the searchers had their own settings listed every setting for every searcher;
such a setting at its old default is dropped when read (so ``config.yaml`` of an older study still
loads), and :func:`flat_dump` gives the old flat form back for the study fingerprint (so older
studies resume).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Searcher(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # each searcher's own literal (the union's discriminator); first in every dump
    seed: int = 0
    seed_named_points: bool = True  # the known methods first (enqueued trials)
    reported: ClassVar[tuple[str, ...]] = ()  # the settings a report names besides the seed


class TPEConfig(_Searcher):
    """Optuna's TPE (single- or multi-objective)."""

    name: Literal["tpe"] = "tpe"
    n_startup_trials: int = Field(10, ge=0)
    reported: ClassVar[tuple[str, ...]] = ("n_startup_trials",)


class NSGA3Config(_Searcher):
    """Optuna's NSGA-III sampler (several objectives)."""

    name: Literal["nsga3"] = "nsga3"
    population: int = Field(20, ge=2)
    reported: ClassVar[tuple[str, ...]] = ("population",)


class PymooNSGA3Config(_Searcher):
    """pymoo's NSGA-III in ask/tell mode, a generation per batch."""

    name: Literal["pymoo-nsga3"] = "pymoo-nsga3"
    population: int = Field(20, ge=2)
    reported: ClassVar[tuple[str, ...]] = ("population",)


class RandomConfig(_Searcher):
    """Uniform random search (Optuna's random sampler)."""

    name: Literal["random"] = "random"


class EvolutionConfig(_Searcher):
    """EvoPress's evolution over per-layer levels (search/searchers/evolution.py): children per generation,
    how many of them (with the parent) the second stage scores again, its fresh tokens (null: no
    second stage) and the pool of fresh minibatches the generations draw from."""

    name: Literal["evolution"] = "evolution"
    offspring: int = Field(16, ge=1)
    survivors: int = Field(2, ge=1)
    stage_tokens: int | None = Field(4096, ge=1)
    stage_pool: int = Field(8, ge=1)
    reported: ClassVar[tuple[str, ...]] = ("offspring", "survivors", "stage_tokens")


SEARCHER_CONFIGS = (TPEConfig, NSGA3Config, PymooNSGA3Config, RandomConfig, EvolutionConfig)
SearcherConfig = Annotated[Union[TPEConfig, NSGA3Config, PymooNSGA3Config, RandomConfig, EvolutionConfig],
                           Field(discriminator="name")]
NAMES = tuple(c.model_fields["name"].default for c in SEARCHER_CONFIGS)
# every setting of the flat searcher config searchers once shared, at its default
FLAT_DEFAULTS: dict[str, Any] = {"name": "tpe", "seed": 0, "population": 20, "n_startup_trials": 10, "offspring": 16,
                                 "survivors": 2, "stage_tokens": 4096, "stage_pool": 8, "seed_named_points": True}


def by_name(name: str) -> type[_Searcher] | None:
    return next((c for c in SEARCHER_CONFIGS if c.model_fields["name"].default == name), None)


def own_settings(value: Any) -> Any:
    """A searcher mapping with the settings of other searchers left at their old defaults dropped;
    one set to anything else is refused, naming the searchers it applies to."""
    if not isinstance(value, dict):
        return value
    value = {"name": "tpe", **value}
    cls = by_name(value["name"])
    if cls is None:
        raise ValueError(f"unknown searcher.name {value['name']!r}; choose from {', '.join(NAMES)}")
    out = {}
    for key, v in value.items():
        if key in cls.model_fields or key not in FLAT_DEFAULTS:
            out[key] = v
        elif v != FLAT_DEFAULTS[key]:
            takes = [c.model_fields["name"].default for c in SEARCHER_CONFIGS if key in c.model_fields]
            raise ValueError(f"{key!r} is a setting of {', '.join(takes)}, not of {value['name']}; remove it")
    return out


def flat_dump(searcher: _Searcher) -> dict:
    """The searcher in the flat form of older studies (every setting, the others at their defaults):
    what the study fingerprint records, so a study from before resumes."""
    return {**FLAT_DEFAULTS, **searcher.model_dump(mode="json")}


def summary(searcher: dict | None) -> str:
    """A searcher as a report names it (from the settings a study recorded, flat ones included):
    its name, seed and the settings that apply to it."""
    if not searcher:
        return "?"
    name = searcher.get("name")
    cls = by_name(name)
    parts = [f"seed {searcher.get('seed')}"] + [f"{k.replace('_', ' ')} {searcher[k]}"
                                               for k in (cls.reported if cls else ()) if k in searcher]
    if not searcher.get("seed_named_points", True):
        parts.append("named points not seeded")
    return f"{name} ({', '.join(parts)})"
