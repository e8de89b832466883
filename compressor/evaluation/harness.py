"""lm-evaluation-harness as the zero-shot and few-shot engine.

The already-loaded model (dense, or pruned and merged: any Hugging Face ``PreTrainedModel``) is wrapped in
lm-eval's ``HFLM``; tasks are lm-eval ``ConfigurableTask`` objects built from lm-eval's own yaml files on
offline data (:mod:`compressor.evaluation.tasks`, :mod:`compressor.evaluation.mmlu`). lm-eval is the
optional extra ``lorapress[eval]`` (``lm-eval==0.4.13``); without it these functions raise
:class:`~compressor.core.errors.DependencyMissingError` naming the install command. Perplexity does not need it.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from compressor.core.errors import ConfigError
from compressor.evaluation.model import max_positions, torch_module

LM_EVAL_VERSION = "0.4.13"
INSTALL = f'"lorapress[eval]" (or: pip install lm-eval=={LM_EVAL_VERSION})'


@contextlib.contextmanager
def quiet_lm_eval(enabled: bool = True) -> Iterator[None]:
    """Keep lm-eval's expected warnings (a model instance passed as ``pretrained``, default aggregations) and
    the datasets progress bars off the terminal; restored afterwards. No-op when ``enabled`` is False."""
    if not enabled:
        yield
        return
    lm_log = logging.getLogger("lm_eval")
    old = lm_log.level
    lm_log.setLevel(logging.ERROR)
    bars: Any = None
    was_disabled = True
    try:
        import datasets.utils

        bars = datasets.utils
        was_disabled = bars.are_progress_bars_disabled()
        bars.disable_progress_bars()
    except (ImportError, AttributeError):  # pragma: no cover - datasets comes with lm-eval
        bars = None
    try:
        yield
    finally:
        lm_log.setLevel(old)
        if bars is not None and not was_disabled:
            bars.enable_progress_bars()


def require_lm_eval():
    """Import ``lm_eval``, or raise DependencyMissingError saying how to install it."""
    from compressor.core.optional import require

    return require("lm_eval", "zero-shot and MMLU tasks (lm-evaluation-harness)", extra=INSTALL,
                   hint="perplexity tasks (wikitext2, ptb) run without it")


def is_ort_model(model: Any) -> bool:
    """True for an exported ONNX folder loaded for ONNX Runtime: optimum's ``ORTModelForCausalLM`` or
    :class:`~compressor.evaluation.ort_model.OrtCausalLM`."""
    from compressor.evaluation.ort_model import OrtCausalLM

    return isinstance(model, OrtCausalLM) or any(
        c.__name__ == "ORTModelForCausalLM" and c.__module__.startswith("optimum.") for c in type(model).__mro__)


@functools.lru_cache(maxsize=1)
def _ort_lm_class():
    """``HFLM`` for an ``ORTModelForCausalLM``: the same requests, batching and scoring, one forward through ONNX
    Runtime. HFLM calls a PyTorch model without an attention mask (all ones; its batches are right-padded, so
    padding never precedes a scored token); the exported graph takes the mask as an input, so it gets all ones."""
    from lm_eval.models.huggingface import HFLM

    from compressor.evaluation.model import forward_logits

    class ORTHFLM(HFLM):
        def _model_call(self, inps, attn_mask=None, labels=None):
            return forward_logits(self.model, inps)

    return ORTHFLM


def make_lm(model: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None):
    """lm-eval's ``HFLM`` around an already-loaded causal LM.

    Args:
        model: a ``transformers.PreTrainedModel`` (dense or pruned and merged), left on its device, or an
            optimum ``ORTModelForCausalLM`` (an exported ONNX folder; scored through ONNX Runtime).
        tokenizer: its tokenizer.
        batch_size: sequences per forward pass (default 8).
        max_length: longest input in tokens; default ``min(2048, max_position_embeddings)``.

    Raises:
        ConfigError: ``model`` is neither a PyTorch ``PreTrainedModel`` nor an ``ORTModelForCausalLM``, or a bad
            batch size.
        DependencyMissingError: lm-eval is not installed.
    """
    require_lm_eval()
    torch = torch_module()
    from transformers import PreTrainedModel

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size {batch_size!r} is not valid; use a positive integer")
    ort = is_ort_model(model)
    if not ort and (not isinstance(model, PreTrainedModel) or not isinstance(model, torch.nn.Module)):
        raise ConfigError(
            "zero-shot and MMLU tasks run lm-eval's HFLM on a PyTorch Hugging Face model (PreTrainedModel) or an "
            f"ONNX Runtime ORTModelForCausalLM (an exported ONNX folder); got {type(model).__name__}"
        )
    from lm_eval.models.huggingface import HFLM

    if max_length is None:
        mp = max_positions(model)
        max_length = min(2048, mp) if mp else 2048
    if not ort:
        model.eval()
    cls = _ort_lm_class() if ort else HFLM
    with quiet_lm_eval():  # it warns that a model instance ignores the string-only options: expected here
        return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def loglikelihoods(model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]], *, batch_size: int = 8,
                   max_length: int | None = None, lm: Any = None) -> list[float]:
    """Summed log-probability (nats) of each continuation given its context, computed by lm-eval's ``HFLM``.

    lm-eval's rules: no special tokens, trailing context spaces move to the continuation, an empty context
    becomes the BOS (else EOS) token, inputs are left-truncated to ``max_length``.

    Example:
        >>> loglikelihoods(model, tok, [("The capital of France is", " Paris")])   # doctest: +SKIP
    """
    if lm is None:
        lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    from lm_eval.api.instance import Instance

    insts = [Instance(request_type="loglikelihood", doc={}, arguments=(c, k), idx=i)
             for i, (c, k) in enumerate(requests)]
    return [float(ll) for ll, _ in lm.loglikelihood(insts, disable_tqdm=True)]


def build_tasks(configs: dict[str, dict[str, Any]], *, progress: bool = False) -> dict[str, Any]:
    """name -> lm-eval ``ConfigurableTask`` (the datasets are read from the configs' local files)."""
    require_lm_eval()
    from lm_eval.api.task import ConfigurableTask

    with quiet_lm_eval(not progress):
        return {name: ConfigurableTask(config=cfg) for name, cfg in configs.items()}


def run_tasks(lm: Any, tasks: dict[str, Any], *, limit: int | None = None, progress: bool = False) -> dict[str, dict]:
    """Run lm-eval tasks; name -> ``{"metrics": {metric: value, metric_stderr: value}, "n": items, "samples": [...]}``.

    ``samples`` holds one dict per scored item: ``doc_id``, the per-item metric values (1.0/0.0), and
    ``loglikelihoods`` (one per choice, nats). ``limit``: the first ``limit`` items of each task.
    """
    require_lm_eval()
    from lm_eval import evaluator

    if not progress and not isinstance(getattr(lm, "loglikelihood", None), functools.partial):
        lm.loglikelihood = functools.partial(lm.loglikelihood, disable_tqdm=True)  # lm-eval's request bar
    with quiet_lm_eval(not progress):
        out = evaluator.evaluate(lm=lm, task_dict=tasks, limit=limit, log_samples=True, bootstrap_iters=1000,
                                 verbosity="ERROR" if not progress else "INFO")
    result = {}
    for name, task in tasks.items():
        res = out["results"][name]
        metrics: dict[str, float] = {}
        for m in (m["metric"] for m in task.config.metric_list):
            if f"{m},none" in res:
                metrics[m] = float(res[f"{m},none"])
                se = res.get(f"{m}_stderr,none")
                metrics[f"{m}_stderr"] = float(se) if isinstance(se, (int, float)) else float("nan")
        samples = []
        for s in out["samples"][name]:
            item = {"doc_id": s["doc_id"], "target": s.get("target")}
            item.update({m: float(s[m]) for m in metrics if not m.endswith("_stderr") and m in s})
            item["loglikelihoods"] = [float(r[0]) for r in s["filtered_resps"]]
            samples.append(item)
        result[name] = {"metrics": metrics, "n": len(samples), "samples": samples}
    return result
