"""``compress prune``: thin click layer over :func:`compressor.pruning.prune`."""
from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import click

_CFG_OPTIONS = {
    # cli option name -> PruneConfig field
    "ratio": "ratio", "criterion": "criterion", "steps": "steps", "prune_every": "prune_every",
    "prune_until": "prune_until", "lam": "lam", "lora_r": "lora_r", "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout", "lr": "lr", "warmup_steps": "warmup_steps", "batch_size": "batch_size",
    "grad_accum": "grad_accum", "seq_len": "seq_len", "max_blocks": "max_blocks", "base_bits": "base_bits",
    "channel_multiple": "channel_multiple", "head_policy": "head_policy", "seed": "seed", "eval_windows": "eval_windows",
    "eval_seq_len": "eval_seq_len", "save_every": "save_every", "dtype": "dtype",
    "gradient_checkpointing": "gradient_checkpointing", "distill": "distill", "loss_chunk_tokens": "loss_chunk_tokens",
}


DEFAULT_CLI_SAVE_EVERY = 25


def _ratio(ctx, param, value):
    if value is None:
        return None
    try:
        r = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number; give a fraction in the open interval (0, 1), e.g. 0.5")
    if not (math.isfinite(r) and 0.0 < r < 1.0):
        raise click.BadParameter(f"{value!r} is outside the open interval (0, 1); e.g. 0.5 removes half")
    return r


@click.command("prune")
@click.argument("model", required=False, default=None)
@click.option("--ratio", callback=_ratio, help="Fraction of the parameters of the decoder layers' prunable projections "
              "(q,k,v,o,gate,up,down) to remove, in (0, 1). Embeddings, norms and LM head are kept. The achieved "
              "ratio after rounding to whole heads/channels is reported.")
@click.option("--data", default="wiki", show_default=True,
              help="Calibration text: a .txt/.jsonl/.json file, a built-in name (wiki, wikitext2, ptb) or hf:NAME:SPLIT.")
@click.option("--text-field", default="text", show_default=True, help="Field of a .jsonl/.json row that holds the text.")
@click.option("--out", "out", required=True, type=click.Path(), help="Output folder (a Hugging Face model folder).")
@click.option("--criterion", default=None, help="lora (default, LoRAPrune Eq. 10), taylor, magnitude or random.")
@click.option("--steps", type=int, default=None, help="Optimizer steps of the LoRA fine-tune [200].")
@click.option("--prune-every", type=int, default=None, help="Steps between mask updates [10].")
@click.option("--prune-until", type=float, default=None, help="Fraction of steps by which the target ratio is reached [0.5].")
@click.option("--lam", type=float, default=None, help="Moving-average factor λ of the scores, in [0, 1) [0.9].")
@click.option("--lora-r", type=int, default=None, help="LoRA rank [8].")
@click.option("--lora-alpha", type=float, default=None, help="LoRA alpha [16].")
@click.option("--lora-dropout", type=float, default=None, help="LoRA dropout [0].")
@click.option("--lr", type=float, default=None, help="Peak AdamW learning rate, cosine decay [2e-4].")
@click.option("--warmup-steps", type=int, default=None, help="Linear warm-up steps [0].")
@click.option("--batch-size", type=int, default=None, help="Sequences per micro-batch [4].")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step [1].")
@click.option("--seq-len", type=int, default=None, help="Tokens per calibration sequence [256].")
@click.option("--max-blocks", type=int, default=None, help="Use at most this many calibration sequences.")
@click.option("--base-bits", type=click.Choice(["8"]), default=None, help="Keep W0 in 8-bit (bitsandbytes).")
@click.option("--channel-multiple", type=int, default=None, help="Round the kept MLP width to a multiple of this [8].")
@click.option("--head-policy", type=click.Choice(["mlp-first", "balanced"]), default=None,
              help="Split of the budget: mlp-first (default; prune heads only once the MLP keeps 25 %) or balanced.")
@click.option("--distill", type=float, default=None,
              help="Weight of distillation from the dense model in the fine-tune loss, in [0, 1] [0]: "
                   "(1-w)·CE + w·KL(dense‖pruned). Costs one more forward pass per step.")
@click.option("--loss-chunk-tokens", type=int, default=None,
              help="Positions per LM-head/loss chunk [256]; 0 = stock loss with the full logits in memory.")
@click.option("--gradient-checkpointing", is_flag=True, default=None,
              help="Recompute activations in the backward pass: less memory, about a third more time per step.")
@click.option("--separate", is_flag=True, help="Baseline: one-shot pruning from the first prune-every steps' scores, then fine-tune.")
@click.option("--seed", type=int, default=None, help="Seed [0].")
@click.option("--eval-data", default="auto", show_default=True,
              help="Held-out text for perplexity before/after: wikitext2, ptb, a text file, 'none', or auto (wikitext2 if found).")
@click.option("--eval-windows", type=int, default=None, help="Perplexity windows before/after (0 skips) [8].")
@click.option("--eval-seq-len", type=int, default=None, help="Tokens per perplexity window [512].")
@click.option("--save-every", type=int, default=None, help="Write a resumable checkpoint every N steps (0: only on Ctrl-C) [25].")
@click.option("--checkpoint-dir", type=click.Path(), default=None, help="Checkpoint folder [OUT.ckpt].")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --checkpoint-dir.")
@click.option("--from-plan", "from_plan", type=click.Path(), default=None,
              help="Re-prune from the scores saved in an earlier output folder (no re-scoring), then fine-tune.")
@click.option("--config", "config_file", type=click.Path(), default=None, help="YAML/JSON file of PruneConfig fields; options given on the command line win.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None, help="Weight dtype [float32].")
@click.option("--allow-pickle", is_flag=True, help="Allow loading pickle weights (pytorch_model.bin); they can run code.")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def prune_cmd(ctx, model, data, text_field, out, separate, eval_data, checkpoint_dir, resume, from_plan, config_file,
              allow_pickle, force, quiet, **opts):
    """Prune MODEL (default: the built-in smollm2-135m) with LoRAPrune and save a smaller HF model.

    MODEL is a built-in name (smollm2-135m), a Hugging Face folder, a .gguf file or a hub id.
    Writes OUT/ (safetensors, config, tokenizer), OUT/compression_report.json and
    OUT/pruning_plan.safetensors, through a temporary folder renamed into place.

    \b
    Example:
      compress prune --ratio 0.5 --steps 200 --out pruned-50
    """
    from compressor.config import PruneConfig
    from compressor.errors import ConfigError, OutputExistsError
    from compressor.io import check_output_dir

    given = {k: v for k, v in opts.items() if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    fields = {_CFG_OPTIONS[k]: v for k, v in given.items() if v is not None}
    if "base_bits" in fields:
        fields["base_bits"] = int(fields["base_bits"])
    if separate:
        fields["joint"] = False
    cli_defaults = {"save_every": DEFAULT_CLI_SAVE_EVERY}  # the file or the command line may override it
    if config_file:
        cfg = PruneConfig.from_file(config_file, defaults=cli_defaults, **fields)
    else:
        if "ratio" not in fields:
            raise ConfigError("--ratio is required (fraction of prunable parameters to remove, in (0, 1)), "
                              "or give it in --config")
        cfg = PruneConfig(**{**cli_defaults, **fields})
    if resume and from_plan:
        raise ConfigError("--resume and --from-plan cannot be used together")
    ckpt = Path(checkpoint_dir) if checkpoint_dir else Path(str(Path(out)) + ".ckpt")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"output path {out!r} is an existing file; give a folder path")
    if ckpt.exists() and not ckpt.is_dir():
        raise ConfigError(f"checkpoint path {str(ckpt)!r} is an existing file; give a folder with --checkpoint-dir")
    if not resume:
        check_output_dir(out, force)
    elif Path(out).is_dir() and any(Path(out).iterdir()) and not force:
        raise OutputExistsError(f"output folder {out!r} already holds a finished model; nothing to resume "
                                f"(pass --force to redo it)")
    from compressor.checkpoint import checkpoint_step, has_checkpoint

    if not resume and has_checkpoint(ckpt) and not force:
        step = checkpoint_step(ckpt)
        raise OutputExistsError(
            f"{str(ckpt)!r} holds the checkpoint of an interrupted run"
            + (f" (step {step})" if step is not None else "")
            + "; add --resume to continue it, or --force to discard it and start over")
    if resume and not has_checkpoint(ckpt):
        from compressor.errors import ResumeError

        raise ResumeError(f"--resume: no checkpoint in {str(ckpt)!r}; start without --resume (add --save-every N)")

    # ---- cheap checks first, then heavy work --------------------------------------------------
    from compressor.models import load_config, load_model, resolve_model

    source = resolve_model(model, allow_pickle=allow_pickle)
    load_config(source)
    from calibration import load_texts

    texts = load_texts(data, text_field=text_field)
    plan = None
    if from_plan:
        from compressor.pruning import load_plan

        plan = load_plan(from_plan)
    eval_text = _eval_text(eval_data)
    _say(quiet, f"Loading {source.spec} ...")
    mdl, tok, _ = load_model(source.spec, dtype=cfg.dtype, base_bits=cfg.base_bits, allow_pickle=allow_pickle)
    from calibration import check_seq_len, pack_blocks

    check_seq_len(cfg.seq_len, mdl.config)
    blocks = pack_blocks(tok, texts, cfg.seq_len, max_blocks=cfg.max_blocks, seed=cfg.seed, add_bos=False)
    _say(quiet, f"Calibration: {blocks.shape[0]} sequences of {blocks.shape[1]} tokens; criterion={cfg.criterion}, "
                f"ratio={cfg.ratio}, steps={cfg.steps}")
    from compressor.pruning import prune, save_plan
    from compressor.save import save_model_folder

    if not resume and ckpt.is_dir():
        shutil.rmtree(ckpt, ignore_errors=True)  # --force: a fresh run starts without the old checkpoint
    progress = None if quiet else _Progress(cfg.steps)
    mdl.config._name_or_path = source.spec
    try:
        res = prune(mdl, cfg, blocks, tokenizer=tok, eval_text=eval_text, checkpoint_dir=ckpt,
                    resume=resume, plan=plan, progress=progress)
    except KeyboardInterrupt:
        if has_checkpoint(ckpt):
            click.echo(f"\nInterrupted; checkpoint in {ckpt} — continue with the same command plus --resume.", err=True)
        else:
            click.echo("\nInterrupted before a checkpoint was written; nothing to resume (run the command again).",
                       err=True)
        sys.exit(130)
    finally:
        if progress is not None:
            progress.close()
    res.report["model"] = source.spec
    res.report["calibration"] = {"source": str(data), "text_field": text_field, "blocks": int(blocks.shape[0]),
                                 "seq_len": int(blocks.shape[1])}
    res.report["eval_data"] = eval_data
    res.report["checkpoint_dir"] = str(ckpt)
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0:
        return
    save_model_folder(res.model, tok, out, force=force or resume, report=res.report,
                      extra=lambda tmp: save_plan(tmp, res))
    shutil.rmtree(ckpt, ignore_errors=True)
    r = res.report
    _say(quiet, f"Saved {out}: ratio asked {r['ratio_asked']}, achieved {r['ratio_achieved']:.4f}; params "
                f"{r['params_total_before']:,} -> {r['params_total_after']:,}; widths {r['widths_after']}")
    if r.get("perplexity_before") and r.get("perplexity_after"):
        _say(quiet, f"Perplexity ({eval_data}, {r['perplexity_after']['windows']} windows): "
                    f"{r['perplexity_before']['ppl']:.2f} -> {r['perplexity_after']['ppl']:.2f}")
    _say(quiet, f"Wall time {r['wall_time_s']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MiB")


def _eval_text(eval_data: str):
    from calibration import load_texts
    from calibration.data import load_eval_text

    if eval_data in (None, "", "none"):
        return None
    if eval_data == "auto":
        try:
            return load_eval_text("wikitext2")
        except Exception:
            return None
    if eval_data in ("wikitext2", "ptb") or eval_data.startswith("ptb:"):
        return load_eval_text(eval_data)
    return "\n\n".join(load_texts(eval_data))


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
