"""Known, harmless third-party messages kept out of the terminal (errors are never filtered).

Each filter drops only records whose message starts with one of the given prefixes; every other record of
the same logger still shows.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


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
    which the graph never gets) and optimum's listing of the two names of the tied embedding / LM head."""
    filt = drop_messages("optimum", "Found different candidate ONNX initializers", "\t")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing",
                                    category=UserWarning)
            yield
    finally:
        logging.getLogger("optimum").removeFilter(filt)


def no_progress_bars() -> None:
    """Turn off the progress bars of transformers (e.g. its GGUF de-quantization bar) and datasets for the rest
    of the process: what ``--quiet`` promises."""
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with contextlib.suppress(ImportError, AttributeError):
        import datasets.utils

        datasets.utils.disable_progress_bars()
