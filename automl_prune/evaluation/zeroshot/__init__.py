"""Zero-shot accuracy on PIQA, BoolQ, ARC-Easy/Challenge, WinoGrande, HellaSwag and LAMBADA (OpenAI),
with lm-evaluation-harness's prompts and metrics.

    from automl_prune.evaluation.zeroshot import evaluate_zero_shot
    res = evaluate_zero_shot(model, tokenizer, "piqa,arc_easy", limit=100, data_dir="../shared/data")
    res["tasks"]["piqa"]["acc_norm"], res["average"]["acc"]

``tasks`` formats documents, ``scoring`` computes batched log-likelihoods, ``suite`` aggregates the
metrics; ``lm_eval_backend`` runs the same tasks through lm-eval when it is installed.
"""

from .suite import BACKENDS, ZeroShotSuite, evaluate_zero_shot, format_table
from .tasks import ALIASES, TASK_NAMES, TASKS, load_docs, parse_tasks

__all__ = ["ALIASES", "BACKENDS", "TASKS", "TASK_NAMES", "ZeroShotSuite", "evaluate_zero_shot", "format_table", "load_docs",
           "parse_tasks"]
