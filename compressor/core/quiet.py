"""Known, harmless third-party messages kept out of the terminal (errors are never filtered).

Each filter drops only records whose message starts with one of the given prefixes; every other record of
the same logger still shows.
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path


class DropMessages(logging.Filter):
    """Drops the records below ERROR whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not str(record.msg).startswith(self.prefixes)


def drop_messages(logger: str, *prefixes: str) -> DropMessages:
    """Install a :class:`DropMessages` filter on ``logger`` for the rest of the process."""
    filt = DropMessages(*prefixes)
    logging.getLogger(logger).addFilter(filt)
    return filt


@contextlib.contextmanager
def quiet_onnx_export() -> Iterator[None]:
    """The messages of a torch / optimum ONNX export that every LLaMA-family export prints and that the
    parity check after it makes moot: torch's note on ``aten::index`` (wrong only for negative indices,
    which the graph never gets), optimum's listing of the two names of the tied embedding / LM head, and the
    tracer's notes on Python values in transformers' cache / mask code and optimum's patcher (shape checks that
    the exported graph's prefill + decode parity check and the greedy-generation check then verify), and torch's
    deprecation notes on the TorchScript exporter that ``--exporter torch`` uses on purpose."""
    filt = drop_messages("optimum", "Found different candidate ONNX initializers", "\t")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing",
                                    category=UserWarning)
            from torch.jit import TracerWarning

            warnings.filterwarnings("ignore", category=TracerWarning, module=r"(transformers|optimum)\.")
            # F.embedding's check of padding_idx against the table size (the same for every input)
            warnings.filterwarnings("ignore", category=TracerWarning, module=r"torch\.nn\.functional")
            # torch's notes that the TorchScript exporter (``dynamo=False``, chosen on purpose) is deprecated
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning,
                                    module=r"torch\.onnx\.")
            yield
    finally:
        logging.getLogger("optimum").removeFilter(filt)


@contextlib.contextmanager
def quiet_peft_wrap() -> Iterator[None]:
    """peft's ``get_peft_model`` reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates
    (a ``FutureWarning`` on every LoRA wrap, i.e. every prune) for ``is_activation_checkpointing``: peft's read, not
    ours, so exactly that warning is dropped inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def no_progress_bars() -> None:
    """Turn off the progress bars of transformers (e.g. its GGUF de-quantization bar) and datasets for the rest
    of the process: what ``--quiet`` promises."""
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    # transformers' GGUF de-quantization bar is a bare tqdm that ignores disable_progress_bar()
    with contextlib.suppress(ImportError, AttributeError):
        import functools

        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        if not isinstance(gguf_utils.tqdm, functools.partial):
            gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    with contextlib.suppress(ImportError, AttributeError):
        import datasets.utils

        datasets.utils.disable_progress_bars()


#: the model types transformers 4.57.3–4.x means by its "incorrect regex pattern" warning (the Mistral tokenizers)
MISTRAL_TYPES = frozenset({"mistral", "mistral3", "voxtral", "ministral", "pixtral"})
_REGEX_WARNING = "The tokenizer you are loading from '"
_REGEX_MARK = "with an incorrect regex pattern"


class MistralRegexFalseAlarm(DropMessages):
    """transformers 4.57.3+ warns of a broken *Mistral* pre-tokenizer regex on every local folder with a
    vocabulary over 100k whose ``config.json`` was written by 4.57.3–4.x, whatever the model type (so every
    Qwen or Gemma folder saved today). Drops that warning only when the folder's ``config.json`` names a
    model type that is not one of the Mistral family; for a Mistral folder, or one whose type cannot be read,
    the warning stays."""

    def __init__(self) -> None:
        super().__init__(_REGEX_WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if super().filter(record) or _REGEX_MARK not in msg:  # an error, or another message
            return True
        folder = msg[len(_REGEX_WARNING):].split("'", 1)[0]
        try:
            model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            return True
        return not isinstance(model_type, str) or model_type in MISTRAL_TYPES


def install_mistral_regex_filter() -> None:
    """Install :class:`MistralRegexFalseAlarm` once on transformers' tokenizer logger."""
    log = logging.getLogger("transformers.tokenization_utils_base")
    if not any(isinstance(f, MistralRegexFalseAlarm) for f in log.filters):
        log.addFilter(MistralRegexFalseAlarm())
