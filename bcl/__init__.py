"""bcl: Balanced Contrastive Learning for long-tailed image recognition."""

__version__ = "0.1.0"
