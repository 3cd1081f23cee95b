"""Evaluation: reconstruction metrics, classifiers and distribution metrics (FID, KID, precision/recall, IS)."""
from .metrics import feature_statistics, frechet_distance, inception_score, kid, precision_recall

__all__ = ["feature_statistics", "frechet_distance", "inception_score", "kid", "precision_recall"]
