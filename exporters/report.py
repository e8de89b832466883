"""What an export wrote: :class:`ExportResult`, the files of a folder and ``export_report.json``."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.core.io import write_json
from compressor.modeling.sizes import model_sizes

#: Name of the JSON report written into every export folder.
REPORT_FILE = "export_report.json"


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        path: the output folder.
        format: ``"onnx"`` or ``"safetensors"``.
        files: file name (relative to ``path``) -> size in bytes.
        total_bytes: sum of ``files``.
        validated: whether validation ran (and passed: a failed validation raises instead).
        seconds: wall time of the whole export, validation included.
        report: the content of ``export_report.json``.
    """

    path: Path
    format: str
    files: dict[str, int] = field(default_factory=dict)
    total_bytes: int = 0
    validated: bool = False
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


def write_report(folder: Path, report: dict, t_start: float) -> None:
    """Add the folder's files, their total size and the elapsed time to ``report``; write ``REPORT_FILE``."""
    files = list_files(folder)
    report["files"] = files
    report["total_bytes"] = sum(files.values())
    report["seconds"] = time.perf_counter() - t_start
    write_json(folder / REPORT_FILE, report)


def list_files(folder: str | os.PathLike) -> dict[str, int]:
    """File name (relative, sorted) -> size in bytes for every file under ``folder``."""
    root = Path(folder)
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def versions(names: tuple[str, ...] = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime")
             ) -> dict[str, str | None]:
    """The installed version of each distribution in ``names`` (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def model_summary(config) -> dict[str, Any]:
    """The sizes of ``config`` as written into ``export_report.json`` (``"model"``)."""
    s = model_sizes(config)
    return {
        "model_type": config.model_type,
        "hidden_size": s.hidden,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "intermediate_size": s.intermediate,
        "vocab_size": s.vocab,
        "tie_word_embeddings": s.tied,
    }
