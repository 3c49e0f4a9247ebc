"""artlib: Action-Region Tracking (ART) for fine-grained video action recognition.

from artlib import RSSA, MTCLoss, ARTHead, SemanticBank, TrackletAggregation
"""

from artlib.nn import RSSA, ARTHead, MTCLoss, SemanticBank, TrackletAggregation

__version__ = "0.1.0"

__all__ = ["ARTHead", "MTCLoss", "RSSA", "SemanticBank", "TrackletAggregation", "__version__"]
