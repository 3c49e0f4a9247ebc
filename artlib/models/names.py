"""The backbone names and the packaged weights, declared once and without torch, so that a
command line can offer them as choices before torch loads (``artlib.models.registry`` builds
them; a test keeps the two equal)."""

BACKBONE_NAMES = (
    "tiny",
    "tiny_cnn",
    "tiny_cnn_t1",
    "uniformerv2_b16",
    "uniformerv2_l14",
    "tea_r50",
)

# weights that ship inside the package (artlib/models/weights/, provenance in its README.md):
# (backbone, tag) -> (file, the constructor arguments they fit). "synthetic": tiny_cnn trained as
# the baseline on another synthetic set (generation seed 1), the synthetic preset's pretrained
# backbone.
PACKAGED_WEIGHTS = {
    ("tiny_cnn", "synthetic"): (
        "tiny_cnn_synthetic.pt",
        {"width": 64, "img_size": 64, "temporal_layers": 3},
    ),
}

__all__ = ["BACKBONE_NAMES", "PACKAGED_WEIGHTS"]
