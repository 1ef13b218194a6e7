"""Photo Eraser: a self-hostable implementation of the Photo Eraser batch API."""

__version__ = "0.1.0"
