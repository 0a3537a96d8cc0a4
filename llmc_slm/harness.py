"""The evaluator of every registered accuracy task, run by lm-evaluation-harness on the in-memory model.

``llmc_slm.tasks.register_task`` registers :class:`HarnessTask` with the engine under each task's name
(a lazy entry: this module is imported when an evaluator is built). Each evaluator finds and reads its
data when it is built, before any model loads (a missing data set is a ``UserError`` naming
``eval.path``), and ``run(adapter)`` wraps ``adapter.model`` / ``adapter.tokenizer`` in lm-eval's ``HFLM``
(the model keeps its dtype and device) and lets the harness build the requests, score them and aggregate.

``eval.limit`` N with ``eval.subset: random`` (the default): a sample of N documents drawn with
``eval.subset_seed``, the same in every run with the same seed and N (``llmc_slm.tasks.subsets``); for
MMLU (a group) N documents in total, stratified by subject (proportional, at least one per subject).
``eval.subset: first``: lm-eval's first N documents; for MMLU N in total over the 57 subjects, spread
evenly (``llmc_slm.tasks.lmeval.selection``: 100 -> 2 items for 43 subjects, 1 for 14), the selection
``tools/check_tasks.py`` uses. The result records ``subset_mode``, ``subset_seed``, ``items_digest`` and,
for a subset, ``item_ids`` (doc indices; MMLU ``subject:index``). ``eval.num_fewshot`` is lm-eval's
``num_fewshot`` (0 by default, the protocol). ``eval.bs`` is HFLM's batch size (for ``slmquant``: the most
items per forward when above 1). ``eval.backend`` picks the loglikelihood backend (``make_lm``): ``slmquant``
(``llmc_slm.backend``, the default: the same requests and answers as HFLM, each shared token computed
once) or ``hf`` (lm-eval's HFLM, the reference).

Result of ``run``: the metrics of the task's output type with their standard errors (multiple choice:
``acc``, ``acc_stderr``, ``acc_norm``, ``acc_norm_stderr``, None where the task has no acc_norm: MMLU
letters), ``n`` (documents evaluated), ``n_total`` (documents in the split), ``subset`` (n < n_total),
``limit``, ``num_fewshot``, ``task`` (the harness's task or group name), ``table_metric`` /
``table_value`` / ``table_stderr`` (what the tables use: the spec's ``table_metric``), the data's
provenance, ``backend`` (which scored it: ``hf``, ``slmquant``, or ``slmquant (whole sequences: ...)``
where the model cannot be packed), and for a grouped task (MMLU) ``categories`` and ``subjects`` (each
with its metrics and n). ``per_item``: the outcome of every item (``lmeval.per_item``), which the pipeline
moves out of the record into the run's ``<results stem>.items.json.gz`` (``llmc.results.RunRecord.set_items``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

from llmc.config import Config
from llmc.data.sources import find_dataset
from llmc.utils import progress_disabled

from .tasks import get_task, load_task_data

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _weights_left_as_they_are(model):
    """HFLM calls ``model.tie_weights()``, which in transformers 5 re-ties lm_head to the embedding whenever
    the config says so: that would undo a method that changed one of them (a rotation, a quantized
    lm_head). Evaluate the model exactly as it is."""
    model.tie_weights = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del model.tie_weights


BACKENDS = ("slmquant", "hf")


def make_lm(adapter, batch_size: int = 1, backend: str = "slmquant", softmax_dtype: str | None = None):
    """The lm-eval ``LM`` that scores the adapter's model and tokenizer, as they are (dtype and device kept):
    ``slmquant`` (``llmc_slm.backend.PrefixSharingLM``: contexts once, continuations packed, the output
    head only where needed) or ``hf`` (lm-eval's ``HFLM``, the reference). ``batch_size``: HFLM's batch
    size; for slmquant the most items per forward when above 1 (else its default, bounded by tokens).
    ``softmax_dtype``: the dtype of the log-softmax and of the sums of log-probabilities, for both backends
    (HFLM's option of that name); None keeps HFLM's default, the logits' dtype."""
    if backend not in BACKENDS:
        raise ValueError(f"eval.backend: '{backend}' is not one of {', '.join(BACKENDS)}")
    from .tasks.lmeval import quiet_lm_eval
    if backend == "slmquant":
        from .backend import PrefixSharingLM
        kwargs = {"batch_size": int(batch_size)} if int(batch_size) > 1 else {}
        lm = PrefixSharingLM(adapter.model, adapter.tokenizer, softmax_dtype=softmax_dtype, **kwargs)
    else:
        from lm_eval.models.huggingface import HFLM
        with _weights_left_as_they_are(adapter.model), quiet_lm_eval(logging.ERROR):
            lm = HFLM(pretrained=adapter.model, tokenizer=adapter.tokenizer, backend="causal",
                      batch_size=int(batch_size), softmax_dtype=softmax_dtype)
        lm.backend_name = "hf"
    if progress_disabled():   # lm-eval passes tqdm's `disable` itself, so TQDM_DISABLE alone is not enough
        for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
            setattr(lm, name, functools.partial(getattr(lm, name), disable_tqdm=True))
    return lm


class HarnessTask:
    """One registered task (a harness task, or the MMLU group) as an engine evaluator."""

    def __init__(self, name: str, cfg: Config):
        from .tasks import lmeval
        self.name = name
        self.spec = get_task(name)
        lmeval.builder(self.spec)  # an output type the harness objects cannot be built for fails here
        self.cfg = cfg
        self.limit = cfg.eval.limit
        self.num_fewshot = cfg.eval.num_fewshot
        # data first: fails with a UserError naming eval.path before any model is loaded
        self.location = find_dataset(name, cfg.eval.path, key="eval.path", download=cfg.eval.download)
        self.data = load_task_data(name, self.location, self.num_fewshot, key="eval.path")

    def describe(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version
        try:
            harness = f"lm-eval {version('lm_eval')}"
        except PackageNotFoundError:
            harness = "lm-eval (version unknown)"
        return {**self.location.describe(), "task": self.spec.harness_name, "harness": harness, "limit": self.limit,
                "num_fewshot": self.num_fewshot, "table_metric": self.spec.table_metric}

    def run(self, adapter) -> dict:
        from .tasks import lmeval, subsets
        t0 = time.perf_counter()
        task_set = lmeval.build_task_set(self.name, self.data)  # fresh tasks for every evaluation position
        lm = make_lm(adapter, self.cfg.eval.bs, self.cfg.eval.backend)
        mode, seed = self.cfg.eval.subset, self.cfg.eval.subset_seed
        sel = lmeval.selection(task_set, self.limit, mode, seed)
        picked = lmeval.picked(task_set, self.limit, mode, seed)
        if "samples" in sel:
            lmeval.prune(task_set, set(sel["samples"]))
        results = lmeval.run(lm, task_set.task_dict(), num_fewshot=self.num_fewshot, log_samples=True, **sel)
        out = lmeval.summarize(task_set, results)
        items = lmeval.per_item(task_set, results)
        metric = self.spec.table_metric
        ids = subsets.item_ids({task_set.subtask_keys.get(t, t): v for t, v in picked.items()}, bool(task_set.groups))
        if items["ids"] != ids:   # never expected: what lm-eval evaluated is what was drawn
            raise RuntimeError(f"{self.name}: lm-eval evaluated other items than the {len(ids)} drawn")
        subset = out["n"] < out["n_total"]
        out.update({
            "limit": self.limit, "num_fewshot": self.num_fewshot, "subset": subset,
            "subset_mode": mode if self.limit is not None else None,
            "subset_seed": seed if self.limit is not None and mode == "random" else None,
            "items_digest": subsets.digest(ids), **({"item_ids": ids} if subset else {}),
            "per_item": items,
            "table_metric": metric, "table_value": out.get(metric),
            "table_stderr": out.get(f"{metric}_stderr"), "data": self.location.describe(),
            "eval_seconds": time.perf_counter() - t0, "backend": lm.backend_name,
        })
        log.info("%s: %s = %s ± %s (n=%d%s)", self.name, metric, _fmt(out["table_value"]),
                 _fmt(out["table_stderr"]), out["n"], f", limit {self.limit}" if self.limit else "")
        return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"

