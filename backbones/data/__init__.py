"""Built-in datasets that need no download."""
from .shapes import CLASSES, default_cache_dir, draw_shape_image, make_shapes_dataset, shapes_dataset_root

__all__ = ["CLASSES", "default_cache_dir", "draw_shape_image", "make_shapes_dataset", "shapes_dataset_root"]
