"""Datasets, long-tail tools, splits and image pipelines."""

from bcl.data.base import ImageClassificationDataset, Sample

__all__ = ["ImageClassificationDataset", "Sample"]
