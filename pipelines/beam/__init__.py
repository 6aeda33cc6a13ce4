"""The I2E engine on Apache Beam: model handlers, PTransforms and the pipeline."""
