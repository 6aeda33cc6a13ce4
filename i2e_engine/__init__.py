"""The I2E engine: engine-agnostic stage logic over plain Python records and Arrow/pandas batches.

Nothing in this package imports apache_beam, pyspark or ray; the wrappers in
``pipelines/`` call these functions, so every engine produces the same rows.
"""
__version__ = "0.4.0"

from i2e_engine.publish import read_manifest, table_uri  # noqa: E402  (the readers' entry points)

__all__ = ["read_manifest", "table_uri", "__version__"]
