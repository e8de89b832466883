"""The evaluation report: results with standard errors and item counts, the terminal table, the run's config."""
from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from compressor.evaluation.model import model_device, torch_module


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean with the sample variance (``ddof=1``), as lm-eval's ``mean_stderr``.

    For 0/1 accuracies this is ``sqrt(p (1 - p) / (n - 1))``. NaN for fewer than two values.
    """
    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def macro_average(parts: dict[str, dict[str, float]], metric: str = "acc") -> dict[str, float]:
    """Unweighted mean of ``metric`` over ``parts`` (e.g. MMLU topics), with its standard error.

    The parts are independent samples, so ``stderr = sqrt(sum(stderr_i ** 2)) / k``. Where a part's own
    stderr is undefined (one item) every part's variance is taken from the pooled mean ``p``:
    ``stderr = sqrt(sum(p (1 - p) / n_i)) / k`` (needs ``n`` in each part).
    """
    vals = [p[metric] for p in parts.values()]
    errs = [p.get(f"{metric}_stderr", float("nan")) for p in parts.values()]
    k = len(vals)
    if not k:
        return {metric: float("nan"), f"{metric}_stderr": float("nan")}
    mean = sum(vals) / k
    if all(math.isfinite(e) for e in errs):
        se = math.sqrt(sum(e * e for e in errs)) / k
    elif all(p.get("n") for p in parts.values()):
        se = math.sqrt(sum(mean * (1 - mean) / p["n"] for p in parts.values())) / k
    else:
        se = float("nan")
    return {metric: mean, f"{metric}_stderr": se}


@dataclass
class EvalReport:
    """Results of :func:`compressor.evaluation.evaluate`.

    Attributes:
        results: task -> metric -> value: ``ppl``/``nll`` for perplexity tasks; ``acc``, ``acc_stderr`` (and
            ``acc_norm``, ``acc_norm_stderr`` where lm-eval defines it) for zero-shot tasks; for ``mmlu`` the
            macro average over topics.
        config: how the run was made (model, dtype, seq_len, limits, batch size, versions).
        details: task -> protocol, data, ``n`` (items scored; tokens for perplexity), seconds; for ``mmlu``
            also ``topics`` (topic -> acc, acc_stderr, n).
    """

    results: dict[str, dict[str, float]]
    config: dict[str, Any]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with keys ``results``, ``config`` and ``details``."""
        return asdict(self)

    def table(self, topics: bool = True) -> str:
        """A plain-text table: one row per task and metric with its stderr and n (and MMLU's topics)."""
        rows = [("task", "metric", "value", "stderr", "n")]

        def add(task: str, metrics: dict[str, Any], n: Any) -> None:
            for name, value in metrics.items():
                if name.endswith("_stderr"):
                    continue
                err = metrics.get(f"{name}_stderr")
                rows.append((task, name, _fmt(value), _fmt(err) if err is not None else "", str(n) if n else ""))

        for task, metrics in self.results.items():
            det = self.details.get(task, {})
            add(task, metrics, det.get("n"))
            if topics:
                for topic, m in det.get("topics", {}).items():
                    add(f"  {topic}", {k: v for k, v in m.items() if k != "n"}, m.get("n"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def run_config(model: Any, source: dict | None, tasks: list[str], seq_len: int | None, limit: Any,
               max_windows: int | None, batch_size: int | None, add_bos: bool) -> dict[str, Any]:
    """What :class:`EvalReport` records about the run: model, parameters, dtype, options, versions, time."""
    torch = torch_module()
    cfg = getattr(model, "config", None)
    n_params = None
    dtype = None
    if isinstance(model, torch.nn.Module):
        n_params = sum(p.numel() for p in model.parameters())
        for p in model.parameters():
            dtype = str(p.dtype).replace("torch.", "")
            break
    versions: dict[str, str | None] = {}
    for mod in ("transformers", "lm_eval"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = None
    return {
        "model": source["spec"] if source else getattr(cfg, "_name_or_path", None) or type(model).__name__,
        "source": source,
        "model_class": type(model).__name__,
        "parameters": n_params,
        "dtype": dtype,
        "tasks": tasks,
        "seq_len": seq_len,
        "limit": limit,
        "max_windows": max_windows,
        "batch_size": batch_size,
        "add_bos": add_bos,
        "torch": torch.__version__,
        "transformers": versions["transformers"],
        "lm_eval": versions["lm_eval"],
        "python": platform.python_version(),
        "device": str(model_device(model)),
        "threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
