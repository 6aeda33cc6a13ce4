"""One entry point for every runner: plan (core), execute (runner), publish (core)."""
from __future__ import annotations

from typing import Optional, Sequence

from i2e_engine.build import Progress, plan_run, publish
from i2e_engine.config import BuildConfig

RUNNERS = ("beam", "spark", "local")


def run_build(config: BuildConfig, runner: str = "beam", beam_args: Sequence[str] = (),
              spark_master: Optional[str] = "local[*]", spark_conf: Sequence[str] = (),
              overwrite: bool = False, retry_failed: bool = False, progress: Progress = print) -> dict:
    """Run a whole build on ``runner`` and return the manifest (also in ``<output>/manifest.json``).

    ``beam_args`` are Beam pipeline options (``--runner=DataflowRunner`` ...); ``spark_master``
    and ``spark_conf`` (``KEY=VALUE``) configure the Spark session (an empty master uses the
    session spark-submit made).
    """
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {RUNNERS} (or a Beam runner name)")
    plan = plan_run(config, overwrite=overwrite, retry_failed=retry_failed, progress=progress)
    if runner == "beam":
        from pipelines.beam.pipeline import execute

        name = execute(plan, beam_args)
    elif runner == "spark":
        from pipelines.spark.job import execute, spark_session

        name = execute(plan, spark_session(spark_master or None, spark_conf))
    else:
        from pipelines import local

        local.annotate(plan, local.hash_and_dedup(plan))
        local.finalize_tables(plan)
        name = local.RUNNER
    progress(f"annotated and finalized on {name}; publishing")
    return publish(plan, name)
