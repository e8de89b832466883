"""The whole ``compress prune`` job as one library call: :func:`prune_job`.

Load the model, read the calibration data, apply the checkpoint policy (refuse to overwrite, refuse to
silently restart over an interrupted run, resume), prune, and write the output folder (model, tokenizer,
``compression_report.json``, ``pruning_plan.safetensors``, ``pruning.png``) atomically. The CLI only parses
options and prints; a pipeline calls this function::

    from compressor.job import prune_job
    from compressor import PruneConfig
    res = prune_job("smollm2-135m", "pruned-50", PruneConfig(ratio=0.5, save_every=25))
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compressor.algorithm.config import PruneConfig
from compressor.core.errors import ConfigError, DiskWriteError, OutputExistsError, ResumeError
from compressor.core.io import write_json
from compressor.core.lock import output_lock
from compressor.core.memory import MemoryTrace
from compressor.modeling.architectures import needs_bos

#: the report inside the output folder
REPORT_NAME = "compression_report.json"


def checkpoint_path(out: str | os.PathLike, checkpoint_dir: str | os.PathLike | None = None) -> Path:
    """Where a run writing ``out`` keeps its resumable checkpoint (default ``OUT.ckpt``)."""
    return Path(checkpoint_dir) if checkpoint_dir else Path(str(Path(out)) + ".ckpt")


def check_job_args(out: str | os.PathLike, ckpt: Path, *, resume: bool, from_plan: Any = None) -> None:
    """What can be refused before the output locks are taken: arguments and paths that are not folders (nothing
    here reads what an earlier or a live run wrote)."""
    if resume and from_plan:
        raise ConfigError("--resume and --from-plan cannot be used together")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"output path {str(out)!r} is an existing file; give a folder path")
    if ckpt.exists() and not ckpt.is_dir():
        raise ConfigError(f"checkpoint path {str(ckpt)!r} is an existing file; give a folder with --checkpoint-dir")


def check_job_paths(out: str | os.PathLike, ckpt: Path, *, resume: bool, force: bool, from_plan: Any = None) -> None:
    """The checkpoint policy, checked under the output locks before any heavy work (a checkpoint to resume is
    verified too): a live run holding the output is refused as such before anything reads its files."""
    from compressor.core.io import check_output_dir
    from compressor.job.checkpoint import checkpoint_step, has_checkpoint, verify_checkpoint

    check_job_args(out, ckpt, resume=resume, from_plan=from_plan)
    if not resume:
        check_output_dir(out, force)
    elif Path(out).is_dir() and any(Path(out).iterdir()) and not force:
        raise OutputExistsError(f"output folder {str(out)!r} already holds a finished model; nothing to resume "
                                f"(pass --force to redo it)")
    if not resume and has_checkpoint(ckpt) and not force:
        step = checkpoint_step(ckpt)
        raise OutputExistsError(
            f"{str(ckpt)!r} holds the checkpoint of an interrupted run"
            + (f" (step {step})" if step is not None else "")
            + "; add --resume to continue it, or --force to discard it and start over")
    if resume and not has_checkpoint(ckpt):
        raise ResumeError(f"--resume: no checkpoint in {str(ckpt)!r}; start without --resume (add --save-every N)")
    if resume:
        verify_checkpoint(ckpt)


def eval_text_for(eval_data: str | None, say: Callable[[str], None] | None = None) -> str | None:
    """Held-out text for perplexity before/after: ``wikitext2``, ``ptb``, a file, ``none`` or ``auto``
    (WikiText-2 where it can be found, else none: ``say`` is told why)."""
    from calibration import EvalDataMissingError, load_texts
    from calibration.data import load_eval_text

    if eval_data in (None, "", "none"):
        return None
    if eval_data == "auto":
        try:
            return load_eval_text("wikitext2")
        except EvalDataMissingError as exc:
            if say is not None:
                say(f"No perplexity before/after: {exc}. Pass --eval-data PATH, ptb or none.")
            return None
    if eval_data in ("wikitext2", "ptb") or eval_data.startswith("ptb:"):
        return load_eval_text(eval_data)
    return "\n\n".join(load_texts(eval_data))


def prune_job(model: str | None, out: str | os.PathLike, config: PruneConfig, *, data: str = "wiki",
              text_field: str = "text", eval_data: str | None = "auto",
              checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
              from_plan: str | os.PathLike | None = None, force: bool = False, allow_pickle: bool = False,
              trust_remote_code: bool = False, progress: Callable[[dict[str, Any]], None] | None = None,
              say: Callable[[str], None] | None = None, memory_check: bool = True):
    """Do what ``compress prune`` does and return the :class:`~compressor.algorithm.api.PruneResult`.

    Args:
        model: built-in name, HF folder, ``.gguf`` file or hub id (None: the built-in default).
        out: output folder; written through a temporary sibling renamed into place.
        config: the run.
        data: calibration text (file, built-in name or ``hf:NAME:SPLIT``); ``text_field`` for json rows.
        eval_data: held-out text for perplexity before/after (see :func:`eval_text_for`).
        checkpoint_dir: resumable checkpoints (default ``OUT.ckpt``), written every ``config.save_every``
            steps and on Ctrl-C; removed once the output is written.
        resume: continue the interrupted run in ``checkpoint_dir``.
        from_plan: an earlier output folder whose saved scores decide the masks (no scoring).
        force: replace an existing output / discard an interrupted run's checkpoint.
        allow_pickle: allow pickle weight files (they can run code).
        trust_remote_code: allow the model folder's own Python code (``auto_map`` in its config.json) to run.
        progress: called after every step with the step record.
        say: called with one-line status messages.
        memory_check: refuse, before any weight is read, a run whose predicted peak memory exceeds the free memory
            of its device (:mod:`compressor.algorithm.plan`; the error names the options that would fit).

    One run per output: the locks of ``out`` and of the checkpoint folder are held for the whole job
    (:func:`compressor.core.lock.output_lock`); a second job on either fails at once with
    :class:`~compressor.core.errors.OutputLockedError`, and the temporaries of killed runs are cleaned up first.

    Raises:
        OutputLockedError, OutputExistsError, ResumeError, ConfigError, DiskWriteError, ...: before any heavy
        work where possible.
    """
    say = say or (lambda msg: None)
    ckpt = checkpoint_path(out, checkpoint_dir)
    check_job_args(out, ckpt, resume=resume, from_plan=from_plan)  # fast refusals first
    with contextlib.ExitStack() as locks:
        for path in (out, ckpt):  # a live run is refused here; the recovery of killed runs is logged as warnings
            locks.enter_context(output_lock(path))
        check_job_paths(out, ckpt, resume=resume, force=force, from_plan=from_plan)  # what earlier runs left
        return _run_job(model, out, ckpt, config, data=data, text_field=text_field, eval_data=eval_data,
                        resume=resume, from_plan=from_plan, force=force, allow_pickle=allow_pickle,
                        trust_remote_code=trust_remote_code, progress=progress, say=say, memory_check=memory_check)


def _run_job(model, out, ckpt: Path, config: PruneConfig, *, data, text_field, eval_data, resume, from_plan, force,
             allow_pickle, trust_remote_code, progress, say, memory_check):
    from compressor.algorithm.api import check_writable, prune
    from compressor.algorithm.plan import check_fits, plan_run
    from compressor.algorithm.precision import held_linear_dtype
    from compressor.core.device import resolve_device
    from compressor.job.checkpoint import check_plan, checkpoint_step, has_checkpoint, load_plan, save_plan
    from compressor.job.picture import picture_note, write_prune_png
    from compressor.modeling.loading import load_config, load_model, resolve_model
    from compressor.modeling.save import save_model_folder

    source = resolve_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    model_config = load_config(source, trust_remote_code=trust_remote_code)
    check_writable(config, model_config.model_type)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device(config.device)
    if memory_check:  # before any weight is read: refuse what would not fit, naming what would
        mem_plan, alts, _ = plan_run(source.spec, config, device, allow_pickle=allow_pickle,
                                     trust_remote_code=trust_remote_code)
        check_fits(mem_plan, alts)
    from calibration import check_seq_len, load_texts, pack_blocks

    trace = MemoryTrace()  # per-phase RSS into the report (memory_phases)
    with trace.phase("texts"):
        texts = load_texts(data, text_field=text_field)
        plan = load_plan(from_plan) if from_plan else None
        if plan is not None:
            check_plan(plan, model_config, source.spec)
        eval_text = eval_text_for(eval_data, say)
    say(f"Loading {source.spec} ...")
    with trace.phase("load"):
        mdl, tok, _ = load_model(source.spec, dtype=config.dtype, base_bits=config.base_bits,
                                 allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                 linear_dtype=None if distributed else held_linear_dtype(
                                     config, device, getattr(model_config, "hidden_size", None)),
                                 device=None if distributed else device)
    check_seq_len(config.seq_len, mdl.config)
    with trace.phase("tokenize"):
        blocks = pack_blocks(tok, texts, config.seq_len, max_blocks=config.max_blocks, seed=config.seed,
                             add_bos=needs_bos(mdl.config))
    say(f"Calibration: {blocks.shape[0]} sequences of {blocks.shape[1]} tokens; criterion={config.criterion}, "
        f"ratio={config.ratio}, steps={config.steps}")
    if not resume and ckpt.is_dir():
        shutil.rmtree(ckpt, ignore_errors=True)  # force: a fresh run starts without the old checkpoint
    mdl.config._name_or_path = source.spec
    try:
        res = prune(mdl, config, blocks, tokenizer=tok, eval_text=eval_text, checkpoint_dir=ckpt, resume=resume,
                    plan=plan, progress=progress, memory=trace, memory_check=False)
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(str(ckpt) if has_checkpoint(ckpt) else "") from exc
    res.report["model"] = source.spec
    res.report["calibration"] = {"source": str(data), "text_field": text_field, "blocks": int(blocks.shape[0]),
                                 "seq_len": int(blocks.shape[1])}
    res.report["eval_data"] = eval_data
    if eval_data == "auto" and eval_text is None:
        res.report["perplexity_skipped"] = "auto: WikiText-2 not found (see the message of the run)"
    res.report["checkpoint_dir"] = str(ckpt)
    res.report["picture"] = picture_note("pruning.png")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0:
        return res

    def extra(tmp: Path) -> None:
        save_plan(tmp, res)
        write_prune_png(res.report, Path(tmp) / "pruning.png")

    merged: Any = res.model
    try:
        with trace.phase("save"):
            save_model_folder(merged, tok, out, force=force or resume, report=res.report, extra=extra,
                              report_name=REPORT_NAME)
    except DiskWriteError as exc:
        step = checkpoint_step(ckpt)
        if step is None:
            raise
        raise DiskWriteError(f"{exc}; the checkpoint of step {step} is kept in {str(ckpt)!r}: run the same command "
                             f"plus --resume once there is space", exc.errno, exc.path) from exc
    shutil.rmtree(ckpt, ignore_errors=True)
    # the save phase ends after the report was written: add it (and the peak it may set) to the saved report
    res.report["memory_phases"] = trace.as_list()
    res.report["peak_rss_mb"] = round(trace.overall_peak_mb, 1)
    write_json(Path(out) / REPORT_NAME, res.report)
    return res
