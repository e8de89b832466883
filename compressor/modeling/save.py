"""Write a pruned model as an ordinary Hugging Face folder, atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from compressor.core.errors import SaveError
from compressor.core.io import atomic_output_dir, write_json


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


def legacy_rope_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The RoPE keys transformers 4.x reads, derived from transformers 5's ``rope_parameters`` in ``config`` (a
    ``config.json`` dict); empty when the dict already has ``rope_theta`` or no ``rope_parameters``.

    Transformers 5 writes only ``rope_parameters`` (``{"rope_type", "rope_theta", ...}``, or one such dict per
    attention type, e.g. Gemma 3's ``full_attention`` / ``sliding_attention``); 4.x ignores it and falls back to its
    default ``rope_theta`` (10000 for Llama), so a folder saved on 5 would silently compute other positions on 4.x.
    The legacy keys are ``rope_theta``, ``rope_scaling`` (None for the default type) and, for a separate sliding
    type, ``rope_local_base_freq``. Transformers 5 reads the folder from ``rope_parameters`` as before.
    """
    rp = config.get("rope_parameters")
    if not isinstance(rp, dict) or "rope_theta" in config:
        return {}
    full = rp.get("full_attention", rp) if isinstance(rp.get("full_attention"), dict) else rp
    if not isinstance(full.get("rope_theta"), (int, float)):
        return {}
    out: dict[str, Any] = {"rope_theta": full["rope_theta"]}
    scaling = {k: v for k, v in full.items() if k != "rope_theta"}
    out["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    sliding = rp.get("sliding_attention")
    if isinstance(sliding, dict) and isinstance(sliding.get("rope_theta"), (int, float)):
        out["rope_local_base_freq"] = sliding["rope_theta"]
    return out


def add_legacy_rope_keys(folder: str | os.PathLike) -> dict[str, Any]:
    """Add :func:`legacy_rope_keys` to ``folder/config.json`` (where it needs them); returns what was added."""
    import json

    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text(encoding="utf-8"))
    extra = legacy_rope_keys(cfg)
    if extra:
        cfg.update(extra)
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return extra


#: ``tokenizer_class`` values transformers 5 writes that transformers 4.x cannot resolve -> the name both resolve to
#: the same fast tokenizer
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_tokenizer_class(folder: str | os.PathLike) -> str | None:
    """Rewrite a ``tokenizer_config.json`` ``tokenizer_class`` only transformers 5 knows (``TokenizersBackend``) to
    ``PreTrainedTokenizerFast``, which transformers 4.57 and 5 both load from ``tokenizer.json``, so a folder saved
    on either stack loads on the other. Returns the class name written, or None when nothing changed."""
    import json

    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text(encoding="utf-8"))
    new = PORTABLE_TOKENIZER_CLASSES.get(cfg.get("tokenizer_class"))
    if new is None:
        return None
    cfg["tokenizer_class"] = new
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return new


def save_tokenizer(tokenizer: Any, folder: str | os.PathLike, *, check: bool = True,
                   sample: str = "Hello world, this is a test.") -> dict[str, Any]:
    """Save ``tokenizer`` into ``folder``, drop a GGUF ``tokenizer.model``, and check that it reloads.

    The check loads the folder with ``AutoTokenizer`` (which then reads ``tokenizer.json``) and compares the
    ids of ``sample`` with the original tokenizer's.

    Args:
        tokenizer: a Hugging Face tokenizer, or None (nothing is written).
        folder: destination folder (exists).
        check: reload and compare (default True).
        sample: text encoded by both for the comparison.

    Returns:
        ``{"saved": bool, "removed_gguf_tokenizer_model": bool, "reload_ok": bool | None}``.

    Raises:
        SaveError: the saved tokenizer does not reload, or encodes ``sample`` differently.
    """
    if tokenizer is None:
        return {"saved": False, "removed_gguf_tokenizer_model": False, "reload_ok": None}
    tokenizer.save_pretrained(str(folder))
    removed = drop_gguf_tokenizer_model(folder)
    portable_tokenizer_class(folder)
    if not check:
        return {"saved": True, "removed_gguf_tokenizer_model": removed, "reload_ok": None}
    from transformers import AutoTokenizer

    try:
        # never the folder's own code (a per-layer-widths folder has an auto_map): transformers 5 would ask on a terminal
        reloaded = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure means the folder is unusable
        raise SaveError(f"the saved tokenizer in {str(folder)!r} does not reload: {type(exc).__name__}: {exc}") from exc
    a, b = list(tokenizer(sample)["input_ids"]), list(reloaded(sample)["input_ids"])
    if a != b:
        raise SaveError(f"the saved tokenizer encodes {sample!r} as {b} instead of {a}")
    return {"saved": True, "removed_gguf_tokenizer_model": removed, "reload_ok": True}


def save_model_folder(model: PreTrainedModel, tokenizer: Any, out: str | os.PathLike, *, force: bool = False,
                      report: dict[str, Any] | None = None, report_name: str = "compression_report.json",
                      extra: Any = None) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer + report into ``out`` via a temporary folder.

    ``extra(tmp_folder)`` may write more files before the folder is renamed into place. A model with per-layer
    widths also gets its remote code (:func:`compressor.modeling.perlayer.write_remote_code`). A full disk raises
    :class:`~compressor.core.errors.DiskWriteError` with the bytes the weights need; ``out`` is left as it was.
    """
    from compressor.modeling.sizes import is_per_layer

    with atomic_output_dir(out, force=force, expected_bytes=weight_bytes(model)) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        add_legacy_rope_keys(tmp)
        if is_per_layer(model.config):
            from compressor.modeling.perlayer import write_remote_code

            write_remote_code(tmp)
        save_tokenizer(tokenizer, tmp)
        if extra is not None:
            extra(tmp)
        if report is not None:
            write_json(tmp / report_name, report)
    return Path(out)


def weight_bytes(model: Any) -> int | None:
    """Bytes of the distinct tensors in ``model``'s state dict (what its safetensors files hold, tied weights
    once); None if it has no state dict."""
    try:
        sd = model.state_dict()
    except Exception:  # noqa: BLE001 - only an estimate for the disk-full message
        return None
    seen: dict[tuple[int, int], int] = {}
    for t in sd.values():
        if hasattr(t, "untyped_storage"):
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            seen[key] = t.numel() * t.element_size()
    return sum(seen.values()) or None
