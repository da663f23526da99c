"""Metrics: classifiers that judge samples, feature extractors and sample-quality scores."""
