"""nn.Modules of ART: RSSA, tracklet aggregation, the MTC loss, the semantics bank and the ART head."""

from artlib.nn._checks import set_check_inputs
from artlib.nn.bank import SemanticBank
from artlib.nn.head import ARTHead
from artlib.nn.losses import MTCLoss
from artlib.nn.region_attention import RegionAttention
from artlib.nn.rssa import RSSA, RegionDecoderLayer
from artlib.nn.tracklets import TrackletAggregation, tracklets

__all__ = [
    "ARTHead",
    "MTCLoss",
    "RSSA",
    "RegionAttention",
    "RegionDecoderLayer",
    "SemanticBank",
    "TrackletAggregation",
    "set_check_inputs",
    "tracklets",
]
