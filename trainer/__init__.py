"""MOFI trainer: image encoders trained from packed I2E shards on Ray Train.

Modules: ``configs`` (experiment configs), ``packed`` (packed shards: index, vocab, streaming,
each rank's seeded and exactly resumable sample order), ``data`` (the loader: decode, augment,
text, per-rank torch batches),
``towers`` (image/text towers + projections), ``heads``/``losses`` (sharded cosine-softmax
head, duplicate-aware contrastive loss), ``task`` (recipes -> named losses), ``state`` (one
rank's TrainState and the pure ``train_step``, any device, no Ray), ``perf`` (FLOPs, MFU,
throughput), ``loop`` (the thin Ray Train loop, checkpoint files), ``train`` (CLI entry point), ``export`` (the
exported encoder format and its loader). See trainer/README.md.

The trainer reads packed shards (and their vocab) through ``schemas`` and ``i2e_engine.storage``;
the only use of ``pipelines`` is ``train.py --tables``, which calls `i2e pack`'s entry point
(``pipelines.pack.run_pack``) to make a pack first.
"""
