"""The search, by role; each part imports only the parts listed before it (tests/test_imports.py):

- ``study/``: the study's definition and record: the config (config.py), the Optuna storage,
  lock and fingerprint, the running state (state.py) and the outcome of a trial (outcome.py);
- ``execution/``: scoring candidates: one plan (candidate.py), one trial (evaluate.py), one stage
  of plans on fresh windows (scoring.py), the level database (levels.py), loading what a study
  scores with (setup.py), in this process or on Ray workers (evaluators.py, worker.py, ray_executor.py);
- ``outputs/``: the folder's report, plots, plan files and trials.csv;
- ``searchers/``: what proposes trials (base.py: the contract; TPE/NSGA-III, pymoo, the evolution);
- ``phases/``: the steps of a run as :class:`~automl_prune.search.phases.base.Phase` objects: the
  search loop, the selection, the allocation phase, polishing, the final comparison;
- ``run.py``: a study run: load once, run the phases in order, write meta.json and the outputs.
"""
