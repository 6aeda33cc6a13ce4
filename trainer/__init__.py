"""MOFI trainer: image encoders trained from the I2E tables on Ray Train.

Modules: ``configs`` (experiment configs), ``data`` (tables -> per-rank torch batches),
``towers`` (image/text towers + projections), ``heads``/``losses`` (sharded cosine-softmax
head, duplicate-aware contrastive loss), ``task`` (recipes -> named losses), ``loop`` (the
per-worker training loop, checkpoints), ``train`` (CLI entry point), ``export`` (the
exported encoder format and its loader). See trainer/README.md.

The trainer reads the tables only through ``schemas`` and never imports ``pipelines``.
"""
