"""``zero_shot``: mean zero-shot accuracy on small fixed subsets of the lm-eval tasks (maximize).

The first ``limit`` documents of each task (the same subset for every candidate) are loaded,
formatted with lm-evaluation-harness's prompts and tokenized once in ``prepare`` and kept in
``ctx.memo``; each candidate costs only the forward passes. The value is the mean over ``tasks`` of
``metric``: ``acc``, or ``acc_norm`` (length-normalised; tasks without it, BoolQ, WinoGrande and
LAMBADA, contribute their ``acc``).

The task files come from ``data_dir`` (a folder laid out like ``shared/data``; default: the
study's ``data_dir``, else $AUTOML_PRUNE_DATA_DIR), else from the Hugging Face hub.

Cost: about ``limit`` x (choices per document) sequences per task and candidate. Small subsets
are noisy (the standard error of an accuracy over n documents is about 0.5 / sqrt(n)); use it as
a guard next to a fast objective, or with a larger ``limit`` for a final check.
"""

from __future__ import annotations

from automl_prune.candidate_context import CandidateContext
from automl_prune.errors import UserError
from automl_prune.evaluation.zeroshot import TASK_NAMES, ZeroShotSuite, parse_tasks
from automl_prune.pruning.apply import PruneResult

from .base import Objective, Reporter, register
from .common import check_choice, check_positive_int, finite

DEFAULT_TASKS = TASK_NAMES  # all seven, in the order of the table in automl_prune.evaluation.zeroshot.tasks


@register
class ZeroShot(Objective):
    name = "zero_shot"
    direction = "maximize"

    def __init__(self, *, tasks: str | list[str] = DEFAULT_TASKS, limit: int = 32, metric: str = "acc_norm",
                 batch_size: int = 8, data_dir: str | None = None):
        try:
            self.tasks = tuple(parse_tasks(tasks if isinstance(tasks, str) else list(tasks)))
        except UserError as exc:
            raise UserError(f"objective {self.name!r}: field 'tasks': {exc}") from None
        except TypeError:
            raise UserError(f"objective {self.name!r}: field 'tasks' must be a list of task names or a "
                            f"comma-separated string; got {tasks!r}") from None
        self.limit = check_positive_int(self.name, "limit", limit, optional=False)
        self.metric = check_choice(self.name, "metric", metric, ("acc", "acc_norm"))
        self.batch_size = check_positive_int(self.name, "batch_size", batch_size, optional=False)
        self.data_dir = data_dir

    def not_streamable(self) -> str | None:
        return "zero-shot tasks run the whole model (objective zero_shot)"

    def _data_dir(self, ctx: CandidateContext) -> str | None:
        return self.data_dir if self.data_dir is not None else ctx.info.get("data_dir")

    def _memo_key(self, ctx: CandidateContext) -> tuple:
        return ("zero_shot", self.tasks, self.limit, self._data_dir(ctx))

    def prepare(self, ctx: CandidateContext) -> None:
        key = self._memo_key(ctx)
        if key not in ctx.memo:
            if ctx.tokenizer is None:
                raise UserError(f"objective {self.name!r} needs the model's tokenizer in the search context")
            ctx.memo[key] = ZeroShotSuite(list(self.tasks), ctx.tokenizer, limit=self.limit, data_dir=self._data_dir(ctx))

    def evaluate(self, ctx: CandidateContext) -> dict:
        """The full zero-shot result of the model as it is now (per task and average)."""
        self.prepare(ctx)
        return ctx.memo[self._memo_key(ctx)].evaluate(ctx.model, batch_size=self.batch_size, device=ctx.device, progress=False)

    def __call__(self, ctx: CandidateContext, result: PruneResult, report: Reporter | None = None) -> float:
        return finite(self.name, self.evaluate(ctx)["average"][self.metric])
