"""What a model folder may make lorapress run, checked before anything is loaded: pickle weight files (they can
execute code) and a folder's own Python code (``auto_map``) only with an explicit flag; GGUF files checked by magic."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compressor.core.errors import ModelLoadError
from compressor.modeling.architectures import supported
from compressor.modeling.sizes import is_per_layer, stock_model_type

SUPPORTED_MODEL_TYPES = supported()

PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

#: files whose ``auto_map`` makes transformers import Python code from the model folder
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")

def check_no_remote_code(folder: str | os.PathLike, spec: str | None = None) -> None:
    """Refuse a model folder that asks to run its own Python code, unless the user trusts it.

    A ``config.json`` (or ``tokenizer_config.json``) with an ``auto_map`` names classes in ``*.py`` files of
    the folder; loading them executes that code. The toolkit never does so without ``--trust-remote-code``
    (``trust_remote_code=True``), and does not silently substitute the stock class either (the folder's own
    code may compute something else).

    Raises:
        ModelLoadError: naming the file, its ``auto_map`` entries and the two ways forward.
    """
    import json

    p = Path(folder)
    for name in REMOTE_CODE_FILES:
        f = p / name
        if not f.is_file():
            continue
        try:
            doc = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if name == "config.json":
                raise ModelLoadError(f"{str(f)!r} is not readable JSON: {exc}") from exc
            continue
        auto_map = doc.get("auto_map") if isinstance(doc, dict) else None
        if auto_map and name == "config.json" and is_per_layer(doc) and stock_model_type(doc) in SUPPORTED_MODEL_TYPES:
            continue  # our own per-layer-widths folder: loaded with the in-package classes, its copy never runs
        if auto_map:
            entries = ", ".join(f"{k} -> {v}" for k, v in auto_map.items()) if isinstance(auto_map, dict) else repr(auto_map)
            mt = doc.get("model_type") if name == "config.json" else None
            stock = (f", or delete auto_map from it to load the folder with transformers' own class for model_type "
                     f"{mt!r}" if mt in SUPPORTED_MODEL_TYPES else "")
            raise ModelLoadError(
                f"model folder {spec or str(p)!r} asks to run its own Python code: {name} has an auto_map ({entries}); "
                f"code from a model folder is only run with --trust-remote-code (trust_remote_code=True), so pass it "
                f"if you trust this folder{stock}")

def check_gguf(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{str(path)!r} is not a GGUF file (bad magic {magic!r})")
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))
    except Exception as exc:  # gguf raises plain ValueError/struct errors on truncated files
        raise ModelLoadError(f"GGUF file {str(path)!r} is corrupt or truncated: {exc}") from exc

def remote_code_hint(exc: Exception) -> str:
    return "; pass --trust-remote-code if you trust its code" if "trust_remote_code" in str(exc) else ""

def check_weight_files(source: Any, config: Any) -> None:
    """Check a model folder's ``*.safetensors`` against its config before loading: every file complete, every
    weight the model needs present (transformers would silently initialise a missing one at random) and of
    the shape the config implies. Reads the file headers only; pickle folders are not checked.

    Raises:
        ModelLoadError: naming the file, the tensor, the shape found and the one expected.
    """
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from compressor.core.io import safetensors_header

    folder = Path(source.path)
    files = sorted(folder.glob("*.safetensors"))
    if not files or getattr(config, "auto_map", None):  # a trusted folder's own class may lay out other weights
        return
    found: dict[str, tuple[list[int], str]] = {}
    for f in files:
        try:
            table = safetensors_header(f)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"weight file {str(f)!r} of model {source.spec!r} is corrupt or incomplete: {exc} "
                                 f"(re-download or re-save the model)") from exc
        found.update({k: (list(v.get("shape", [])), f.name) for k, v in table.items()})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise ModelLoadError(f"{str(index)!r} is not a valid safetensors index: {exc}") from exc
        absent = sorted(s for s in shards if not (folder / s).is_file())
        if absent:
            raise ModelLoadError(f"model {source.spec!r}: {str(index)!r} lists weight files that are missing: "
                                 f"{', '.join(absent[:5])}")
    try:
        with torch.device("meta"):
            ref = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - a config transformers cannot build is reported by the real load
        return
    expected = {k: list(v.shape) for k, v in ref.state_dict().items()}
    prefix = getattr(ref, "base_model_prefix", "model")
    for k in list(found):
        if k not in expected and f"{prefix}.{k}" in expected:  # a base model saved without its prefix
            found[f"{prefix}.{k}"] = found.pop(k)
    wrong = [(k, found[k], shape) for k, shape in expected.items() if k in found and found[k][0] != shape]
    if wrong:
        k, (got, fname), want = wrong[0]
        raise ModelLoadError(
            f"model {source.spec!r}: {len(wrong)} weight(s) do not have the shape config.json implies, e.g. {k!r} "
            f"in {fname!r} is {got}, config.json implies {want}; the weights and config.json are from different "
            f"models (re-save the folder with save_pretrained)")
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = sorted(k for k in expected if k not in found and not (tied and k.endswith("lm_head.weight")))
    if missing:
        raise ModelLoadError(
            f"model {source.spec!r}: {len(missing)} weight(s) the config needs are in none of "
            f"{', '.join(f.name for f in files)}, e.g. {missing[:3]}; the folder is incomplete (re-download or "
            f"re-save it)")
