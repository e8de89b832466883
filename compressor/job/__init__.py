"""The ``compress prune`` job on disk: :func:`prune_job` loads, calibrates, locks the output, checkpoints, resumes,
saves the folder and writes the report (and its picture), once."""
from compressor.job.run import (
    REPORT_NAME,
    check_job_args,
    check_job_paths,
    checkpoint_path,
    eval_text_for,
    prune_job,
)

__all__ = ["prune_job", "checkpoint_path", "check_job_args", "check_job_paths", "eval_text_for", "REPORT_NAME"]
