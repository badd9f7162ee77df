"""Pictures: reconstruction grids."""

from .reconstruction import (STATS, reconstruction_image, reconstruction_rows, save_reconstruction, to_pixels,
                             visible_stats)

__all__ = ["STATS", "reconstruction_image", "reconstruction_rows", "save_reconstruction", "to_pixels", "visible_stats"]
