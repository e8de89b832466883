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
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compressor.algorithm.config import PruneConfig
from compressor.core.errors import ConfigError, DiskWriteError, NonFiniteError, OutputExistsError, ResumeError
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
            of its device (:mod:`compressor.algorithm.memory_plan`; the error names the options that would fit).

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
    from calibration import check_seq_len, load_texts, pack_blocks
    from compressor.algorithm.api import check_writable, conclude, run_steps, start_run
    from compressor.algorithm.criteria import get_criterion
    from compressor.algorithm.distributed import accelerator, is_secondary_rank
    from compressor.algorithm.memory_plan import check_fits, plan_run
    from compressor.algorithm.precision import precision_for
    from compressor.algorithm.saved_plan import check_plan
    from compressor.core.device import resolve_device
    from compressor.job.checkpoint import (
        checkpoint_step,
        has_checkpoint,
        load_plan,
        save_checkpoint,
        save_plan,
    )
    from compressor.job.picture import picture_note, write_prune_png
    from compressor.modeling.loading import load_config, load_model, resolve_model
    from compressor.modeling.save import save_model_folder

    # the config resolved once, before any weight is read: source, device, precision, memory plan
    source = resolve_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    model_config = load_config(source, trust_remote_code=trust_remote_code)
    check_writable(config, model_config.model_type)
    acc = accelerator()
    device = acc.device if acc is not None else resolve_device(config.device)
    criterion = get_criterion(config.criterion)
    precision = precision_for(config, device, getattr(model_config, "hidden_size", None), criterion)
    mem_plan = None
    if memory_check:  # refuse what would not fit, naming what would
        mem_plan, alts = plan_run(source, model_config, config, device, precision=precision)
        check_fits(mem_plan, alts)
    trace = MemoryTrace()  # per-phase RSS into the report (memory_phases)
    with trace.phase("texts"):
        texts = load_texts(data, text_field=text_field)
        plan = load_plan(from_plan) if from_plan else None
        if plan is not None:
            check_plan(plan, model_config, source.spec)
        eval_text = eval_text_for(eval_data, say)
    say(f"Loading {source.spec} ...")
    with trace.phase("load"):
        mdl, tok, _ = load_model(source, config=model_config, dtype=config.dtype, base_bits=config.base_bits,
                                 allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                 linear_dtype=None if acc is not None else precision.held,
                                 device=None if acc is not None else device)
    check_seq_len(config.seq_len, mdl.config)
    with trace.phase("tokenize"):
        blocks = pack_blocks(tok, texts, config.seq_len, max_blocks=config.max_blocks, seed=config.seed,
                             add_bos=needs_bos(mdl.config))
    say(f"Calibration: {blocks.shape[0]} sequences of {blocks.shape[1]} tokens; criterion={config.criterion}, "
        f"ratio={config.ratio}, steps={config.steps}")
    if not resume and ckpt.is_dir():
        shutil.rmtree(ckpt, ignore_errors=True)  # force: a fresh run starts without the old checkpoint
    mdl.config._name_or_path = source.spec
    planned = (mem_plan.store, mem_plan.layers_per_pass) \
        if mem_plan is not None and mem_plan.store and mem_plan.layers_per_pass else None
    with _Stop() as stop:  # Ctrl-C: finish the step, write a checkpoint, stop
        try:
            run = start_run(mdl, config, blocks, tokenizer=tok, eval_text=eval_text, plan=plan, memory=trace,
                            device=device, criterion=criterion, precision=precision, accelerator=acc, checked=True,
                            statistics_dir=ckpt / "compensation", store=planned)
            if resume:
                _resume(run.loop, ckpt)

            def after_step(loop: Any) -> None:
                due = config.save_every and loop.step_count % config.save_every == 0
                if run.is_main and (due or stop.requested):
                    save_checkpoint(ckpt, loop.state_dict())
                if stop.requested:
                    raise KeyboardInterrupt(f"stopped at step {loop.step_count}; checkpoint written to {str(ckpt)!r}")

            run_steps(run, progress=progress, after_step=after_step)
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc}; the last good checkpoint (if any) is kept in {str(ckpt)!r}; resume it "
                                 f"with --resume, or start again with a lower --lr") from exc
        except KeyboardInterrupt as exc:
            raise KeyboardInterrupt(str(ckpt) if has_checkpoint(ckpt) else "") from exc
    res = conclude(run)
    res.report.update({
        "model": source.spec,
        "calibration": {"source": str(data), "text_field": text_field, "blocks": int(blocks.shape[0]),
                        "seq_len": int(blocks.shape[1])},
        "eval_data": eval_data, "checkpoint_dir": str(ckpt), "picture": picture_note("pruning.png")})
    if mem_plan is not None:
        res.report["memory_plan"] = mem_plan.as_dict()
    if eval_data == "auto" and eval_text is None:
        res.report["perplexity_skipped"] = "auto: WikiText-2 not found (see the message of the run)"
    if is_secondary_rank():
        return res

    def extra(tmp: Path) -> None:  # inside the temporary folder, before it is renamed into place
        save_plan(tmp, res)
        write_prune_png(res.report, Path(tmp) / "pruning.png")
        # the report is written once, last, with the save phase measured up to here
        res.report["memory_phases"] = trace.so_far()
        res.report["peak_rss_mb"] = round(trace.overall_peak_mb, 1)
        write_json(Path(tmp) / REPORT_NAME, res.report)

    try:
        with trace.phase("save"):
            merged: Any = res.model
            save_model_folder(merged, tok, out, force=force or resume, extra=extra)
    except DiskWriteError as exc:
        step = checkpoint_step(ckpt)
        if step is None:
            raise
        raise DiskWriteError(f"{exc}; the checkpoint of step {step} is kept in {str(ckpt)!r}: run the same command "
                             f"plus --resume once there is space", exc.errno, exc.path) from exc
    shutil.rmtree(ckpt, ignore_errors=True)
    return res


class _Stop:
    """SIGINT → finish the current step, write a checkpoint, then raise KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self):
        import threading

        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)



def _resume(loop: Any, checkpoint_dir: str | os.PathLike | None) -> None:
    from compressor.job.checkpoint import has_checkpoint, load_checkpoint

    if checkpoint_dir is None or not has_checkpoint(checkpoint_dir):
        raise ResumeError(f"--resume given but there is no checkpoint in {str(checkpoint_dir)!r}")
    st = load_checkpoint(checkpoint_dir)
    if st.get("run_id") != loop.run_id:
        raise ResumeError(f"the checkpoint in {str(checkpoint_dir)!r} was written by a run with another model, "
                          f"data or configuration (run id {st.get('run_id')} != {loop.run_id}); resume it with the "
                          f"options it was started with, start over with --force (discards it), or use another --out")
    step, history = st.get("step"), st.get("history")
    if not isinstance(history, list) or not isinstance(step, int) or not 0 <= step <= loop.cfg.steps \
            or len(history) != step:
        raise ResumeError(f"the checkpoint in {str(checkpoint_dir)!r} is inconsistent (edited?): step {step!r} with "
                          f"{len(history) if isinstance(history, list) else history!r} history entries, for a run of "
                          f"{loop.cfg.steps} steps; start over with --force (discards it)")
    try:
        loop.load_state_dict(st)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:  # a hand-edited checkpoint
        raise ResumeError(f"the checkpoint in {str(checkpoint_dir)!r} does not fit this run's model: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}; start over with "
                          f"--force (discards it)") from exc

