"""Typed errors. Every error the toolkit raises on purpose derives from :class:`CompressError`.

Subclasses also inherit the builtin that describes them (``ValueError`` for bad input,
``RuntimeError`` for failures while running), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class CompressError(Exception):
    """Base class of all errors raised by the toolkit."""


class ConfigError(CompressError, ValueError):
    """An option or configuration value is invalid (the message names the value and the valid range)."""


class ModelLoadError(CompressError, ValueError):
    """A model path or id cannot be resolved or loaded."""


class UnsupportedArchitectureError(CompressError, ValueError):
    """The model's architecture is not one the toolkit knows how to prune or export."""


class GroupDiscoveryError(CompressError, RuntimeError):
    """The dependency graph did not yield the coupled groups the config implies."""


class CalibrationError(CompressError, ValueError):
    """Calibration or evaluation data is missing, empty, unreadable or too short."""


class AssetError(CompressError, RuntimeError):
    """A packaged asset could not be fetched, or its checksum does not match."""


class OutputExistsError(CompressError, FileExistsError):
    """The output path exists and is not empty; pass ``force=True`` / ``--force`` to replace it."""


class NonFiniteError(CompressError, RuntimeError):
    """A loss, score or weight became NaN/inf."""


class SaveError(CompressError, RuntimeError):
    """A saved file does not read back as what was saved (e.g. a tokenizer that does not reload)."""


class ExportError(CompressError, RuntimeError):
    """Export failed."""


class ValidationError(ExportError):
    """An exported model does not match the PyTorch reference within tolerance."""


class DependencyMissingError(CompressError, RuntimeError):
    """An optional dependency (e.g. onnxruntime, CUDA) needed for this command is not available."""


class ResumeError(CompressError, RuntimeError):
    """A checkpoint cannot be resumed (missing, corrupt, or written by a different configuration)."""


class OutputLockedError(CompressError, BlockingIOError):
    """Another live process holds the output (or its checkpoint): one run per output at a time. The message
    names that process (pid, host, start time, command) and its lock file."""


class DiskWriteError(CompressError, OSError):
    """Writing a checkpoint, an output folder or a report failed (disk full, quota, I/O error). The message
    names the path, the bytes needed against the bytes free, and what was kept intact; ``errno`` is the
    underlying error's."""

    def __init__(self, message: str, errno_: int | None = None, path: str | None = None):
        super().__init__(message)
        self.errno = errno_
        self.path = path
