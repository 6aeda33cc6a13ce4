"""The spark-submit entry point of the I2E build: the arguments of `i2e build`, run on the
session spark-submit made.

    spark-submit [spark options] pipelines/spark/submit.py <the arguments of `i2e build`>

It lives apart from ``job.py`` because it goes through the CLI, and the CLI reaches
``job.py`` through ``pipelines.run``: were it in ``job.py``, the two would import each other.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from pipelines.cli import main as cli_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`i2e build --runner spark` on the submitting session (an empty master: spark-submit's)."""
    return cli_main(["build", "--runner", "spark", "--spark-master", "", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
