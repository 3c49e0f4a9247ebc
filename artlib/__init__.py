"""artlib: Action-Region Tracking (ART) for fine-grained video action recognition.

from artlib import RSSA, MTCLoss, ARTHead, SemanticBank, TrackletAggregation
"""

from artlib.nn import RSSA, ARTHead, MTCLoss, SemanticBank, TrackletAggregation
from artlib.nn.region_attention import RegionAttention

__version__ = "0.1.0"

__all__ = [
    "ARTHead",
    "MTCLoss",
    "RSSA",
    "RegionAttention",
    "SemanticBank",
    "TrackletAggregation",
    "__version__",
]
