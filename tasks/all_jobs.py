"""Every kind of job, by its Prefect task name: the registry, kept apart from
the interface (``tasks/job.py``) as pre-commit keeps ``all_languages.py``
apart from ``lang_base.py``."""

from __future__ import annotations

from tasks.benchmarks import BenchmarkJob
from tasks.job import Job
from tasks.quality import QualityJob
from tasks.release_jobs import BuildJob, PublishJob
from tasks.testing import MatrixJob, SuiteJob
from tasks.usage import LlmBudgetJob

JOB_KINDS: dict[str, type[Job]] = {
    job.kind: job
    for job in (QualityJob, SuiteJob, MatrixJob, BenchmarkJob, BuildJob, PublishJob, LlmBudgetJob)
}
