"""Entry point for ``python -m trainer.eval`` (see ``--help``)."""
import sys

from trainer.eval.cli import main

sys.exit(main())
