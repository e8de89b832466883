"""Resumable training checkpoints: tensors in safetensors, structure in JSON, written atomically.

A checkpoint holds the LoRA weights, optimizer and scheduler state, moving-average scores, masks, the
step, the data position and the RNG states — everything needed so that a resumed run produces the same
masks and weights as an uninterrupted one. No pickle is used.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ResumeError
from .io import atomic_write_text

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


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state: Any = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1], int(np_state[2]), int(np_state[3]), float(np_state[4])]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_checkpoint(ckpt_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically replace the checkpoint in ``ckpt_dir/last`` with ``state`` (nested dicts/lists of tensors
    and JSON values).

    The tensors go to a new uniquely named ``tensors-*.safetensors`` file first; then ``state.json``, which
    names that file, is replaced in one ``os.replace`` — the single commit point. A process killed at any
    moment (even ``kill -9``) therefore leaves either the previous complete checkpoint or the new one,
    never a mix and never none. Files of older checkpoints are removed after the commit.
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


def load_checkpoint(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`save_checkpoint` wrote. Raises :class:`ResumeError` if missing or corrupt."""
    from safetensors.torch import load_file

    path = Path(ckpt_dir) / CKPT_NAME
    if not (path / STATE_FILE).is_file():
        raise ResumeError(f"no checkpoint to resume in {str(Path(ckpt_dir))!r} (expected {str(path / STATE_FILE)!r}); "
                          f"run without --resume, or with --save-every N to write checkpoints")
    try:
        doc = json.loads((path / STATE_FILE).read_text())
        if isinstance(doc, dict) and "format" in doc:
            meta, tensor_file = doc["state"], path / doc["tensors"]
        else:  # layout of the first release: state.json holds the structure, tensors.safetensors the tensors
            meta, tensor_file = doc, path / LEGACY_TENSORS
        tensors = load_file(str(tensor_file))
        return _unflatten(meta, tensors)
    except Exception as exc:
        raise ResumeError(f"checkpoint {str(path)!r} is corrupt: {type(exc).__name__}: {exc}; "
                          f"delete {str(Path(ckpt_dir))!r} and run without --resume") from exc


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
PLAN_FILE = "pruning_plan.safetensors"


def save_plan(folder: str | os.PathLike, result: Any) -> None:
    """Write the moving-average scores and masks of a :class:`~compressor.pruning.PruneResult` next to the
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
    """Read a pruning plan saved by :func:`save_plan`: ``{"heads": [...], "channels": [...], "source"}``
    (raises ConfigError if missing)."""
    from safetensors import safe_open

    from .errors import ConfigError

    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"{str(folder)!r} has no {PLAN_FILE}; give the output folder of an earlier `compress prune`")
    with safe_open(str(path), "pt") as f:
        n = int(f.metadata()["num_layers"])
        heads = [f.get_tensor(f"layer{i}.heads") for i in range(n)]
        channels = [f.get_tensor(f"layer{i}.channels") for i in range(n)]
    return {"heads": heads, "channels": channels, "source": str(folder)}
