"""Deterministic names: the same task, step and attempt always give the same Job name."""

from __future__ import annotations

import hashlib

MAX_JOB_NAME = 63  # Job names become a pod label value


def job_name(task_name: str, task_uid: str, step_id: str, attempt: int) -> str:
    """`<task>-<step>-<attempt>-<hash of uid/step/attempt>`, cut to fit a label value."""
    digest = hashlib.sha256(f"{task_uid}/{step_id}/{attempt}".encode()).hexdigest()[:8]
    suffix = f"-{attempt}-{digest}"
    prefix = f"{task_name}-{step_id}"[: MAX_JOB_NAME - len(suffix)].rstrip("-.")
    return prefix + suffix
