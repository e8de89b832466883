"""``compress`` command line. Each subcommand is a thin click layer over one library function.

Heavy libraries (torch, transformers) are imported inside the commands so ``compress --help`` is instant.
"""
from __future__ import annotations

import sys

import click

from .errors import CompressError


class _Group(click.Group):
    """Turns :class:`CompressError` into a one-line message and exit code 2 (bad input) or 1 (failure)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompressError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2 if isinstance(exc, (ValueError, FileExistsError)) else 1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lorapress")
def main() -> None:
    """Structured LoRAPrune compression for LLaMA-family causal LMs.

    \b
    compress prune   [MODEL] --ratio 0.5 --out DIR     prune + merge -> HF folder
    compress export  MODEL_DIR --format onnx --out DIR  ONNX (KV cache) / safetensors
    compress bench   ONNX_DIR [--baseline ONNX_DIR]     ONNX Runtime latency
    compress eval    MODEL_DIR --tasks wikitext2,piqa    perplexity / zero-shot
    """


def _register() -> None:
    from .commands.prune import prune_cmd

    main.add_command(prune_cmd)
    try:
        from exporters.commands import bench_cmd, export_cmd

        main.add_command(export_cmd)
        main.add_command(bench_cmd)
    except ImportError:  # pragma: no cover - exporters not written yet
        pass
    try:
        from .commands.eval import eval_cmd

        main.add_command(eval_cmd)
    except ImportError:  # pragma: no cover
        pass


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
