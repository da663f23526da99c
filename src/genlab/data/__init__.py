"""Data: readers for image datasets, the vectorised batch pipeline, batch ordering."""

from genlab.data.datasets import ImageData, load_image_data, read_idx, resolve_data_root
from genlab.data.transforms import BatchPipeline, denormalize, normalize

__all__ = ["ImageData", "load_image_data", "read_idx", "resolve_data_root", "BatchPipeline",
           "normalize", "denormalize"]
