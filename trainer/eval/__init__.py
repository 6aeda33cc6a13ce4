"""Evaluation of image encoders: GPR1200-protocol retrieval mAP, kNN, linear probe,
zero-shot and caption retrieval, with an embedding cache and a CLI (``python -m trainer.eval``).

The metric modules take plain arrays, so they serve the trainer's in-loop evaluation as well
as the CLI; encoders and image sets come in through ``encoders`` and ``datasets``.
"""
from trainer.eval.caption_retrieval import caption_retrieval_metrics
from trainer.eval.knn import KnnResult, knn_classify
from trainer.eval.linear_probe import LinearProbeResult, linear_probe
from trainer.eval.retrieval import RetrievalResult, chance_map, retrieval_metrics
from trainer.eval.zeroshot import ZeroShotResult, clean_class_name, zeroshot_classify

__all__ = [
    "KnnResult", "LinearProbeResult", "RetrievalResult", "ZeroShotResult",
    "caption_retrieval_metrics", "chance_map", "clean_class_name", "knn_classify",
    "linear_probe", "retrieval_metrics", "zeroshot_classify",
]
