"""The I2E build on PySpark: a thin adapter over the engine core (see job.py)."""
