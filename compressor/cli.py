"""``compress`` command line. Each subcommand is a thin click layer over one library function.

Heavy libraries (torch, transformers) are imported inside the commands so ``compress --help`` is instant.
"""
from __future__ import annotations

import errno
import sys

import click

from compressor.core.errors import CompressError, OutputLockedError


class _Group(click.Group):
    """Turns :class:`CompressError` into a one-line message and exit code 2 (bad input, or an output that exists
    or another run holds) or 1 (failure);
    an ``OSError`` (disk full, permission denied while writing ...) into a one-line message and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompressError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2 if isinstance(exc, (ValueError, FileExistsError, OutputLockedError)) else 1)
        except OSError as exc:
            click.echo(f"Error: {_os_error_message(exc)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


def _os_error_message(exc: OSError) -> str:
    msg = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename:
        msg += f": {str(exc.filename)!r}"
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        msg += " - free disk space or write --out to another disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg += " - check the permissions of that path or choose another --out"
    return msg


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lorapress")
def main() -> None:
    """Structured LoRAPrune compression for LLaMA-family causal LMs.

    \b
    compress prune   [MODEL] --ratio 0.5 --out DIR     prune + merge -> HF folder
    compress export  MODEL_DIR --format onnx --out DIR  ONNX (KV cache) / safetensors / gguf
    compress bench   DIR [--baseline DIR]               ONNX Runtime / llama.cpp (GGUF) latency
    compress eval    MODEL_DIR --tasks wikitext2,piqa    perplexity / zero-shot
    """


def _register() -> None:
    """Add the subcommands. This is the composition root: the one place in compressor that imports exporters.

    The command modules import only click at module level, so a failing import here is a real bug and is
    not swallowed (``compress`` would otherwise start without ``export`` and ``bench``)."""
    from compressor.commands.eval import eval_cmd
    from compressor.commands.prune import prune_cmd
    from exporters.commands import bench_cmd, export_cmd

    for cmd in (prune_cmd, export_cmd, bench_cmd, eval_cmd):
        main.add_command(cmd)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
