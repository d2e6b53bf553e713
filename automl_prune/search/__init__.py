"""Search drivers: the loaded candidate context, searchers (Optuna, pymoo), studies, reports."""
