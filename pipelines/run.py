"""One entry point for every runner: plan (core), execute (runner), publish and report (core)."""
from __future__ import annotations

from typing import Optional, Sequence

from i2e_engine.build import Progress, plan_run, publish
from i2e_engine.report import write_build_report
from i2e_engine.config import BuildConfig

RUNNERS = ("beam", "spark", "local")


def run_build(config: BuildConfig, runner: str = "beam", beam_args: Sequence[str] = (),
              spark_master: Optional[str] = "local[*]", spark_conf: Sequence[str] = (),
              overwrite: bool = False, retry_failed: bool = False, progress: Progress = print) -> dict:
    """Run a whole build on ``runner`` and return the manifest (also in ``<output>/manifest.json``),
    with ``report``: the run report's URI (``<output>/report.html``; None if it could not be made).

    ``beam_args`` are Beam pipeline options (``--runner=DataflowRunner`` ...); ``spark_master``
    and ``spark_conf`` (``KEY=VALUE``) configure the Spark session (an empty master uses the
    session spark-submit made).
    """
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {RUNNERS} (or a Beam runner name)")
    with plan_run(config, overwrite=overwrite, retry_failed=retry_failed, progress=progress) as plan:
        if runner == "beam":
            from pipelines.beam.pipeline import execute

            name, metrics = execute(plan, beam_args)
        elif runner == "spark":
            from pipelines.spark.job import execute, spark_session

            name, metrics = execute(plan, spark_session(spark_master or None, spark_conf))
        else:
            from pipelines import local

            name, metrics = local.execute(plan)
        progress(f"annotated and finalized on {name}; publishing")
        manifest = publish(plan, name, metrics)
    return {**manifest, "report": write_build_report(manifest["output"], progress)}
