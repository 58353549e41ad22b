"""Task data: the built-in synthetic task family and loaders for real data sets."""

from ray_s3ft.tasks.types import Example

__all__ = ["Example"]
