"""The op layer: one public function per op, each dispatching CUDA -> Triton, CPU -> native (csrc),
else the plain-PyTorch reference. ``backend()`` says which runs; ``ARTLIB_BACKEND`` (read once) or ``use_backend()`` forces one.

Every op follows one template (artlib/ops/_template.py): kernels -> host forward/backward -> one
autograd.Function (eager) and one custom op with fake and autograd (torch.compile / export)."""

from artlib.ops._backend import (
    BACKENDS,
    backend,
    native_available,
    set_backend,
    triton_available,
    use_backend,
)
from artlib.ops.mtc_loss import mtc_loss, mtc_loss_ref
from artlib.ops.region_attention import (
    region_attention,
    region_attention_form,
    region_attention_ref,
)
from artlib.ops.tracklet_aggregate import tracklet_aggregate, tracklet_aggregate_ref

__all__ = [
    "BACKENDS",
    "backend",
    "native_available",
    "set_backend",
    "use_backend",
    "triton_available",
    "mtc_loss",
    "mtc_loss_ref",
    "region_attention",
    "region_attention_form",
    "region_attention_ref",
    "tracklet_aggregate",
    "tracklet_aggregate_ref",
]
