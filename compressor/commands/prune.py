"""``compress prune``: parses options and prints; the job is :func:`compressor.job.prune_job`.

Every :class:`~compressor.algorithm.config.PruneConfig` field marked ``cli`` becomes an option (name, help, default,
choices from the field's metadata), so a new config field appears in the CLI, YAML and ``--help`` at once.
"""
from __future__ import annotations

import math
import sys
import time
import typing

import click

from compressor.algorithm.config import RECIPES, PruneConfig, cli_fields

DEFAULT_CLI_SAVE_EVERY = 25


#: ``compress prune --help``: the essentials in full, then one line per section; ``--help-all``: every section in
#: full. Options in no section are listed under the last one.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Essentials", ("ratio", "out", "data", "steps", "device", "dtype", "resume", "config_file", "dry_run", "quiet")),
    ("Output and runs", ("force", "checkpoint_dir", "save_every", "from_plan", "eval_data", "eval_windows",
                         "eval_seq_len", "text_field", "recipe", "no_memory_check", "allow_pickle",
                         "trust_remote_code")),
    ("Memory and speed", ("amp", "gradient_checkpointing", "compensate_store", "batch_size", "grad_accum",
                          "seq_len", "max_blocks", "loss_chunk_tokens", "base_bits")),
    ("Recipe", ("criterion", "compensate", "distill", "teacher", "lr", "lora_r", "lora_alpha", "widths",
                "min_channels", "head_policy", "skip_layers", "prune_every", "prune_until", "schedule",
                "channel_multiple", "seed")),
    ("Research knobs", ()),
)


def option_sections(names: typing.Iterable[str]) -> list[tuple[str, list[str]]]:
    """``(title, option names)`` of the :data:`SECTIONS` that hold any of ``names``, in order; a name in no
    section goes to the last one (``help`` and ``help_all`` to none)."""
    names = list(names)
    placed = {n for _, section in SECTIONS for n in section}
    out = []
    for title, section in SECTIONS:
        section = section or tuple(sorted(n for n in names if n not in placed and n not in ("help", "help_all")))
        rows = [n for n in section if n in names]
        if rows:
            out.append((title, rows))
    return out


class SectionedCommand(click.Command):
    """A command whose ``--help`` shows the essentials and the names of the other options by section, and whose
    ``--help-all`` shows every option under its section title."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        records: dict[str, tuple[str, str]] = {}
        for p in self.get_params(ctx):
            rec = p.get_help_record(ctx) if isinstance(p, click.Option) else None
            if rec is not None and p.name is not None:
                records["help" if p is help_option else p.name] = rec
        full = ctx.meta.get("help_all", False)
        for title, names in option_sections(records):
            rows = [records[n] for n in names]
            if full or title == SECTIONS[0][0]:
                with formatter.section(title):
                    formatter.write_dl(rows)
            else:
                flags = [r[0].split(" ")[0].rstrip(",") for r in rows]
                with formatter.section(f"{title} (compress prune --help-all)"):
                    line = ""
                    for i, flag in enumerate(flags):  # whole option names per line (no break at a hyphen)
                        item = flag + ("," if i < len(flags) - 1 else "")
                        if line and formatter.current_indent + len(line) + 1 + len(item) > formatter.width:
                            formatter.write(" " * formatter.current_indent + line + "\n")
                            line = ""
                        line = f"{line} {item}" if line else item
                    formatter.write(" " * formatter.current_indent + line + "\n")
        with formatter.section("Help"):
            formatter.write_dl([records[n] for n in ("help_all", "help") if n in records])


def _help_all(ctx, param, value):
    if value and not ctx.resilient_parsing:
        ctx.meta["help_all"] = True
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


def _ratio(ctx, param, value):
    if value is None:
        return None
    try:
        r = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number; give a fraction in the open interval (0, 1), e.g. 0.5") from None
    if not (math.isfinite(r) and 0.0 < r < 1.0):
        raise click.BadParameter(f"{value!r} is outside the open interval (0, 1); e.g. 0.5 removes half")
    return r


def cli_default(f) -> typing.Any:
    """The default of a PruneConfig field's ``compress prune`` option (the CLI checkpoints every
    :data:`DEFAULT_CLI_SAVE_EVERY` steps; the library only on Ctrl-C)."""
    return DEFAULT_CLI_SAVE_EVERY if f.name == "save_every" else f.default


def _config_options(fn):
    """Decorate ``fn`` with one click option per CLI-exposed PruneConfig field (declaration order)."""
    hints = typing.get_type_hints(PruneConfig)
    for f in reversed(cli_fields()):
        typ = hints[f.name]
        args = typing.get_args(typ)
        base = next((t for t in args if t is not type(None)), typ) if args else typ
        default = cli_default(f)
        shown = "" if default is None or f.name == "ratio" else f" [{default}]"
        help_text = f.metadata["help"] + (" [required, here or in --config]" if f.name == "ratio" else shown)
        name = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        kw: dict = {"default": None, "help": help_text}
        if f.name == "ratio":
            kw["callback"] = _ratio
            kw["metavar"] = "FRACTION"
        elif base is bool:
            name = f"{name}/--no-{f.name.replace('_', '-')}"
        elif choices:
            kw["type"] = click.Choice([str(c) for c in choices])
        else:
            kw["type"] = {int: int, float: float, str: str}[base]
        fn = click.option(name, f.name, **kw)(fn)
    return fn


def config_from_cli(ctx: click.Context, opts: dict, *, separate: bool, config_file: str | None,
                    recipe: str | None) -> PruneConfig:
    """Options given on the command line win over the YAML/JSON file, which wins over the recipe and the
    CLI's defaults."""
    from compressor.core.errors import ConfigError

    given = {k: v for k, v in opts.items()
             if v is not None and ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    hints = typing.get_type_hints(PruneConfig)
    for k, v in list(given.items()):
        if isinstance(v, str) and int in typing.get_args(hints[k]):  # choices of an Optional[int] (base_bits)
            given[k] = int(v)
    if separate:
        given["joint"] = False
    defaults = {"save_every": DEFAULT_CLI_SAVE_EVERY, **RECIPES[recipe or "default"]}
    if config_file:
        return PruneConfig.from_file(config_file, defaults=defaults, **given)
    if "ratio" not in given:
        raise ConfigError("--ratio is required (fraction of prunable parameters to remove, in (0, 1)), or give it in --config")
    return PruneConfig(**{**defaults, **given})


@click.command("prune", cls=SectionedCommand)
@click.argument("model", required=False, default=None)
@click.option("--help-all", is_flag=True, expose_value=False, is_eager=True, callback=_help_all,
              help="Show every option, by section, and exit.")
@click.option("--out", "out", required=True, type=click.Path(), help="Output folder (a Hugging Face model folder).")
@click.option("--data", default="wiki", show_default=True,
              help="Calibration text: a .txt/.jsonl/.json file, a built-in name (wiki, wikitext2, ptb) or hf:NAME:SPLIT.")
@click.option("--text-field", default="text", show_default=True, help="Field of a .jsonl/.json row that holds the text.")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
              help="Named set of defaults: default (the option defaults, docs/why-defaults.md), paper (LoRAPrune's "
                   "Algorithm 1 and criterion as published) or official (its official code's schedule and "
                   "aggregation).")
@_config_options
@click.option("--separate", is_flag=True, help="Baseline: one-shot pruning from the first prune-every steps' scores, then fine-tune.")
@click.option("--eval-data", default="auto", show_default=True,
              help="Held-out text for perplexity before/after: wikitext2, ptb, a text file, 'none', or auto (wikitext2 if found).")
@click.option("--checkpoint-dir", type=click.Path(), default=None, help="Checkpoint folder [OUT.ckpt].")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --checkpoint-dir.")
@click.option("--from-plan", "from_plan", type=click.Path(), default=None,
              help="Re-prune from the scores saved in an earlier output folder (no re-scoring), then fine-tune.")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="YAML/JSON file of PruneConfig fields; options given on the command line win.")
@click.option("--allow-pickle", is_flag=True, help="Allow loading pickle weights (pytorch_model.bin); they can run code.")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a model folder's own Python code (auto_map in config.json) to run; only for folders you trust.")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--dry-run", is_flag=True,
              help="Print the predicted peak memory per phase and the options that would fit, then exit.")
@click.option("--no-memory-check", "no_memory_check", is_flag=True,
              help="Start even when the predicted peak memory exceeds the device's free memory.")
@click.pass_context
def prune_cmd(ctx, model, out, data, text_field, recipe, separate, eval_data, checkpoint_dir, resume, from_plan,
              config_file, allow_pickle, trust_remote_code, force, quiet, dry_run, no_memory_check, **opts):
    """Prune MODEL (default: the built-in smollm2-135m) with LoRAPrune and save a smaller HF model.

    MODEL is a built-in name (smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, gemma3-270m), a Hugging Face
    folder, a .gguf file or a hub id.
    Writes OUT/ (safetensors, config, tokenizer), OUT/compression_report.json, OUT/pruning.png and
    OUT/pruning_plan.safetensors, through a temporary folder renamed into place.

    \b
    Example:
      compress prune --ratio 0.5 --out pruned-50
    """
    from compressor.job import prune_job

    cfg = config_from_cli(ctx, opts, separate=separate, config_file=config_file, recipe=recipe)
    if dry_run:
        _dry_run(model, cfg, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        return
    if quiet:
        from compressor.core.quiet import no_progress_bars

        no_progress_bars()
    progress = None if quiet else _Progress(cfg.steps)
    # the library's own notes (e.g. compensation's statistics collection) on stderr, unless --quiet
    notes = None
    if not quiet:
        import logging

        notes = logging.StreamHandler(sys.stderr)
        notes.setFormatter(logging.Formatter("%(message)s"))
        notes.setLevel(logging.INFO)
        lib = logging.getLogger("compressor")
        lib.addHandler(notes)
        lib_level = lib.level
        lib.setLevel(logging.INFO)
    try:
        res = prune_job(model, out, cfg, data=data, text_field=text_field, eval_data=eval_data,
                        checkpoint_dir=checkpoint_dir, resume=resume, from_plan=from_plan, force=force,
                        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, progress=progress,
                        say=lambda m: _say(quiet, m), memory_check=not no_memory_check)
    except KeyboardInterrupt as exc:
        if str(exc):
            click.echo(f"\nInterrupted; checkpoint in {exc} — continue with the same command plus --resume.", err=True)
        else:
            click.echo("\nInterrupted before a checkpoint was written; nothing to resume (run the command again).",
                       err=True)
        sys.exit(130)
    finally:
        if progress is not None:
            progress.close()
        if notes is not None:
            lib.removeHandler(notes)
            lib.setLevel(lib_level)
    r = res.report
    _say(quiet, f"Saved {out}: ratio asked {r['ratio_asked']}, achieved {r['ratio_achieved']:.4f}; params "
                f"{r['params_total_before']:,} -> {r['params_total_after']:,}; widths {r['widths_after']}")
    if r.get("perplexity_before") and r.get("perplexity_after"):
        _say(quiet, f"Perplexity ({eval_data}, {r['perplexity_after']['windows']} windows): "
                    f"{r['perplexity_before']['ppl']:.2f} -> {r['perplexity_after']['ppl']:.2f}")
    _say(quiet, f"Wall time {r['wall_time_s']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MiB")
    phases = r.get("memory_phases") or []
    if phases:
        top = max(phases, key=lambda p: p["peak_mb"])
        _say(quiet, "Peak RSS per phase (MiB): " + ", ".join(f"{p['phase']} {p['peak_mb']:.0f}" for p in phases)
             + f" (highest: {top['phase']}; compression_report.json memory_phases)")


def _dry_run(model, cfg: PruneConfig, *, allow_pickle: bool, trust_remote_code: bool) -> None:
    """``--dry-run``: the memory plan of this run and of the alternatives, on stdout; nothing is loaded or written."""
    from compressor.algorithm.memory_plan import GiB, plan_run
    from compressor.core.device import resolve_device
    from compressor.modeling.loading import DEFAULT_MODEL, load_config, resolve_model

    device = resolve_device(cfg.device)
    source = resolve_model(model or DEFAULT_MODEL, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    plan, alts = plan_run(source, load_config(source, trust_remote_code=trust_remote_code), cfg, device)
    click.echo(f"{model or DEFAULT_MODEL}: ratio {cfg.ratio}, {cfg.steps} steps, batch {cfg.batch_size} x "
               f"{cfg.seq_len} tokens")
    for line in plan.lines():
        click.echo(line)
    if alts:
        click.echo("other options (predicted peak):")
        for label, p in alts:
            fit = "" if p.fits is None else ("  fits" if p.fits else "  does not fit")
            click.echo(f"  {label:<58} {p.peak / GiB:7.2f} GiB{fit}")


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        click.echo(msg, err=True)


class _Progress:
    """A tqdm bar on a terminal; otherwise a line every ~5 % of the steps."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None
        self.t0 = time.time()
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="prune", unit="step", file=sys.stderr)
        self.every = max(1, total // 20)

    def __call__(self, rec):
        if self.bar is not None:
            if self.bar.n < rec["step"] - 1:
                self.bar.update(rec["step"] - 1 - self.bar.n)
            self.bar.update(1)
            extra = {"lm_loss": f"{rec['lm_loss']:.3f}"} if "lm_loss" in rec else {}
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", **extra, sparsity=f"{rec['sparsity']:.3f}")
        elif rec["step"] % self.every == 0 or rec["step"] == self.total or rec["step"] == 1:
            el = time.time() - self.t0
            lm = f"  lm_loss {rec['lm_loss']:.4f}" if "lm_loss" in rec else ""
            click.echo(f"step {rec['step']}/{self.total}  loss {rec['loss']:.4f}{lm}  sparsity {rec['sparsity']:.3f}  "
                       f"lr {rec['lr']:.2e}  {el:.0f}s", err=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
