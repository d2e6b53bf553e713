"""Study configs shipped in the package: ``automl-prune search`` without ``--config`` runs
``quickstart.yaml``, and a config may name a preset as its base (``extends: quickstart``).
Read with ``importlib.resources`` (``automl_prune.search.study.config.preset``)."""
