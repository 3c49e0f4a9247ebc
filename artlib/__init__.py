"""artlib: Action-Region Tracking (ART) for fine-grained video action recognition."""

__version__ = "0.1.0"
