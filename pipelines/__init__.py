"""Runners over the engine core (``i2e_engine``): they place work and move data, nothing else.

- ``beam``: Apache Beam (the local FnApiRunner by default; Dataflow, Flink ... by option);
- ``spark``: PySpark (a local session by default, or the one ``spark-submit`` starts);
- ``local``: the core in one Python process, the bare reference.
"""
