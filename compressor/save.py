"""Write a pruned model as an ordinary Hugging Face folder, atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from .io import atomic_output_dir, write_json


def drop_gguf_tokenizer_model(folder: str | os.PathLike) -> bool:
    """Delete ``folder/tokenizer.model`` if it is a GGUF file (starts with ``b"GGUF"``).

    A tokenizer loaded from a ``.gguf`` file keeps the whole ``.gguf`` as its ``vocab_file`` and
    ``save_pretrained`` copies it as ``tokenizer.model`` (98 MB for SmolLM2-135M). The fast tokenizer
    only needs ``tokenizer.json``. Returns True if a file was removed.
    """
    p = Path(folder) / "tokenizer.model"
    if p.is_file():
        with open(p, "rb") as fh:
            if fh.read(4) == b"GGUF":
                p.unlink()
                return True
    return False


def save_tokenizer(tokenizer: Any, folder: str | os.PathLike) -> None:
    """Save a tokenizer; drop the copy of a GGUF file that GGUF-loaded tokenizers write as ``tokenizer.model``."""
    if tokenizer is None:
        return
    tokenizer.save_pretrained(str(folder))
    drop_gguf_tokenizer_model(folder)


def save_model_folder(model: nn.Module, tokenizer: Any, out: str | os.PathLike, *, force: bool = False,
                      report: dict[str, Any] | None = None, report_name: str = "compression_report.json",
                      extra: Any = None) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer + report into ``out`` via a temporary folder.

    ``extra(tmp_folder)`` may write more files before the folder is renamed into place.
    """
    with atomic_output_dir(out, force=force) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        if extra is not None:
            extra(tmp)
        if report is not None:
            write_json(tmp / report_name, report)
    return Path(out)
