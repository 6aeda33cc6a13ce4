"""Deduplication before the models: perceptual hashes, a multi-index near-duplicate search,
the clusters and their survivors, semantic dedup on embeddings, benchmark decontamination."""
