"""Resumable training checkpoints: tensors in safetensors, structure in JSON, written atomically.

A checkpoint holds the LoRA weights, optimizer and scheduler state, moving-average scores, masks, the
step, the data position and the RNG states — everything needed so that a resumed run produces the same
masks and weights as an uninterrupted one. No pickle is used.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.algorithm.saved_plan import PLAN_FILE, check_plan  # noqa: F401 - re-exported
from compressor.core.errors import ConfigError, ResumeError
from compressor.core.io import WRITE_FAULT_ERRNOS, atomic_write_text, safetensors_header, write_fault

CKPT_NAME = "last"
STATE_FILE = "state.json"
LEGACY_TENSORS = "tensors.safetensors"
CKPT_FORMAT = 2


def _flatten(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by ``{"__tensor__": key}`` and collect them."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(f"{prefix}.{k}", v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        key = f"{prefix}"
        tensors[key] = torch.from_numpy(obj.copy())
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    return obj


def _key(k: Any) -> Any:
    return {"__int__": k} if isinstance(k, int) else k


def _unkey(k: Any) -> Any:
    return k["__int__"] if isinstance(k, dict) and "__int__" in k else k


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
        if "__dict__" in obj:
            return {_unkey(k): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(ckpt_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically replace the checkpoint in ``ckpt_dir/last`` with ``state`` (nested dicts/lists of tensors
    and JSON values).

    The tensors go to a new uniquely named ``tensors-*.safetensors`` file first; then ``state.json``, which
    names that file, is replaced in one ``os.replace`` — the single commit point. A process killed at any
    moment (even ``kill -9``) therefore leaves either the previous complete checkpoint or the new one,
    never a mix and never none. Files of older checkpoints are removed after the commit.

    A full or failing disk raises :class:`~compressor.core.errors.DiskWriteError` naming the checkpoint, the
    bytes it needs against the bytes free, and the step of the previous checkpoint, which stays intact.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta = _flatten("s", state, tensors)
    path = Path(ckpt_dir) / CKPT_NAME
    path.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="tensors-", suffix=".safetensors", dir=path)
    os.close(fd)
    try:
        save_file(tensors, tmp_name)
        _fsync_file(tmp_name)
        doc = {"format": CKPT_FORMAT, "step": state.get("step"), "run_id": state.get("run_id"),
               "tensors": Path(tmp_name).name, "state": meta}
        atomic_write_text(path / STATE_FILE, json.dumps(doc))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if exc.errno not in WRITE_FAULT_ERRNOS:
            raise
        needed = sum(t.numel() * t.element_size() for t in tensors.values()) + len(json.dumps(meta))
        prev = checkpoint_step(ckpt_dir)
        kept = (f"the previous checkpoint (step {prev}) is intact" if prev is not None
                else "there is no earlier checkpoint")
        raise write_fault(exc, f"checkpoint of step {state.get('step')}", path, needed, kept=kept,
                          hint="give --checkpoint-dir on another disk; then continue with --resume") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_file(path)
    for f in path.iterdir():  # superseded tensors, and temp files of writes that were killed
        stale = (f.name.startswith("tensors-") and f.name != Path(tmp_name).name) or f.name == LEGACY_TENSORS \
            or f.name.startswith(f".{STATE_FILE}.")
        if stale:
            with contextlib.suppress(OSError):
                f.unlink()
    return path


def _fsync_file(path: str | os.PathLike) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _refs(obj: Any, out: list[str]) -> list[str]:
    """Tensor keys a checkpoint's structure refers to."""
    if isinstance(obj, dict):
        for k in ("__tensor__", "__ndarray__"):
            if k in obj:
                out.append(obj[k])
        for v in obj.values():
            _refs(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _refs(v, out)
    return out


def verify_checkpoint(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Check the checkpoint in ``ckpt_dir`` without loading its tensors; return its ``state.json``.

    Checks that ``state.json`` is a JSON object of a known format with an integer step, that the tensor
    file it names is a plain file name inside the checkpoint, that the file holds all the bytes its header
    promises, and that every tensor the structure refers to is in it. This is what ``--resume`` runs before
    loading the model, so a truncated or hand-edited checkpoint fails at once.

    Raises:
        ResumeError: naming the file, what is wrong with it, and ``--force`` (start over).
    """
    path = Path(ckpt_dir) / CKPT_NAME
    state_file = path / STATE_FILE
    fix = f"start over with --force (discards {str(Path(ckpt_dir))!r})"
    if not state_file.is_file():
        raise ResumeError(f"no checkpoint to resume in {str(Path(ckpt_dir))!r} (expected {str(state_file)!r}); "
                          f"run without --resume, or with --save-every N to write checkpoints")
    try:
        doc = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResumeError(f"checkpoint file {str(state_file)!r} is not readable JSON (truncated or edited?): "
                          f"{exc}; {fix}") from exc
    if not isinstance(doc, dict):
        raise ResumeError(f"checkpoint file {str(state_file)!r} holds a {type(doc).__name__}, not the JSON object "
                          f"a checkpoint writes; {fix}")
    if "format" in doc:
        if doc["format"] != CKPT_FORMAT:
            raise ResumeError(f"checkpoint file {str(state_file)!r} has format {doc['format']!r}; this version "
                              f"reads format {CKPT_FORMAT} (and the first release's); {fix}")
        missing = [k for k in ("step", "run_id", "tensors", "state") if k not in doc]
        if missing:
            raise ResumeError(f"checkpoint file {str(state_file)!r} lacks the key(s) {', '.join(missing)}; {fix}")
        name, meta = doc["tensors"], doc["state"]
        step = doc["step"]
    else:
        name, meta, step = LEGACY_TENSORS, doc, doc.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ResumeError(f"checkpoint file {str(state_file)!r} has step {step!r}; a step is an integer >= 0; {fix}")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ResumeError(f"checkpoint file {str(state_file)!r} names the tensor file {name!r}; it must be a file "
                          f"name inside {str(path)!r}; {fix}")
    tensor_file = path / name
    if not tensor_file.is_file():
        raise ResumeError(f"checkpoint file {str(state_file)!r} names {name!r}, which is missing from {str(path)!r}; "
                          f"{fix}")
    try:
        table = safetensors_header(tensor_file)
    except (OSError, ValueError) as exc:
        raise ResumeError(f"checkpoint tensors {str(tensor_file)!r} are corrupt: {exc}; {fix}") from exc
    absent = [k for k in _refs(meta, []) if k not in table]
    if absent:
        raise ResumeError(f"checkpoint tensors {str(tensor_file)!r} lack {len(absent)} tensor(s) that "
                          f"{STATE_FILE} refers to, e.g. {absent[:3]}; {fix}")
    return doc


def load_checkpoint(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`save_checkpoint` wrote (checked by :func:`verify_checkpoint` first).

    Raises :class:`ResumeError` if missing or corrupt."""
    from safetensors.torch import load_file

    path = Path(ckpt_dir) / CKPT_NAME
    doc = verify_checkpoint(ckpt_dir)
    meta, tensor_file = (doc["state"], path / doc["tensors"]) if "format" in doc else (doc, path / LEGACY_TENSORS)
    try:
        tensors = load_file(str(tensor_file))
        return _unflatten(meta, tensors)
    except Exception as exc:
        raise ResumeError(f"checkpoint {str(path)!r} is corrupt: {type(exc).__name__}: {exc}; start over with "
                          f"--force (discards {str(Path(ckpt_dir))!r})") from exc


def has_checkpoint(ckpt_dir: str | os.PathLike) -> bool:
    return (Path(ckpt_dir) / CKPT_NAME / STATE_FILE).is_file()


def checkpoint_step(ckpt_dir: str | os.PathLike) -> int | None:
    """Optimizer step of the checkpoint in ``ckpt_dir`` (None if there is none or it cannot be read)."""
    try:
        doc = json.loads((Path(ckpt_dir) / CKPT_NAME / STATE_FILE).read_text())
        return int(doc["step"])  # top-level in both layouts
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---- saved pruning plan ----------------------------------------------------------------------


def save_plan(folder: str | os.PathLike, result: Any) -> None:
    """Write the moving-average scores and masks of a :class:`~compressor.algorithm.api.PruneResult` next to the
    pruned model (``pruning_plan.safetensors``: per layer ``heads`` [num_heads], ``channels`` [intermediate]
    float64 scores, and ``kept_heads`` / ``kept_channels`` bool masks, in the dense model's indices)."""
    from safetensors.torch import save_file

    if result.scores is None:
        return
    t: dict[str, torch.Tensor] = {}
    for i, (s, lm) in enumerate(zip(result.scores, result.masks.layers)):
        t[f"layer{i}.heads"] = s.heads.double().contiguous()
        t[f"layer{i}.channels"] = s.channels.double().contiguous()
        t[f"layer{i}.kept_heads"] = lm.heads.clone()
        t[f"layer{i}.kept_channels"] = lm.channels.clone()
    save_file(t, str(Path(folder) / PLAN_FILE), metadata={"num_layers": str(len(result.scores))})


def load_plan(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a pruning plan saved by :func:`save_plan`: ``{"heads": [...], "channels": [...], "source"}``.

    Raises:
        ConfigError: the plan is missing, truncated or not one :func:`save_plan` wrote (the message names
            the file and what is wrong).
    """
    from safetensors import safe_open

    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"{str(folder)!r} has no {PLAN_FILE}; give the output folder of an earlier `compress prune`")
    try:
        table = safetensors_header(path)
        with safe_open(str(path), "pt") as f:
            n = int((f.metadata() or {})["num_layers"])
            keys = [f"layer{i}.{k}" for i in range(n) for k in ("heads", "channels")]
            absent = [k for k in keys if k not in table]
            if absent:
                raise ValueError(f"it lacks {absent[:3]} of the {n} layers its metadata announces")
            heads = [f.get_tensor(f"layer{i}.heads") for i in range(n)]
            channels = [f.get_tensor(f"layer{i}.channels") for i in range(n)]
    except KeyError:
        raise ConfigError(f"pruning plan {str(path)!r} has no num_layers metadata; it was not written by "
                          f"`compress prune`") from None
    except Exception as exc:  # safetensors raises its own error types on damaged files
        raise ConfigError(f"pruning plan {str(path)!r} is corrupt: {exc}; give the output folder of an earlier "
                          f"`compress prune`") from exc
    return {"heads": heads, "channels": channels, "source": str(folder)}
