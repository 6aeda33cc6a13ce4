"""The I2E engine on Apache Beam: the pipeline and its DoFns over the engine core."""
