"""Region cross-attention, the hot op of RSSA (Eq. 3 of the ART paper).

Shapes: N frames (any leading dims such as B T, flattened), K region queries per frame, L tokens per
frame, d width, ``heads`` heads of width d_h = d / heads, and M = heads K folded query rows.

``region_attention(query, x, ...)`` is equivalent to
``nn.MultiheadAttention(d, heads, batch_first=True)(query, x, x)`` (and, with ``need_weights=True``,
to its ``average_attn_weights=False`` per-head maps), but in its *absorbed* form it never projects x
to keys and values. Because keys and values are linear in x, the projections fold into the queries
(DESIGN.md, "Region attention")::

    q~[n, (h k)] = (query W_q,h^T + b_q,h) W_k,h / sqrt(d_h)         (M x d: the heads become rows)
    S = q~ x^T,   P = softmax_rows(S),   A = P x                      (the core: M x L, M x d)
    out = concat_h(A_h W_v,h^T + b_v,h) W_o^T + b_o

The key bias cancels in the softmax; the value bias is added after, because each row of P sums to 1.
The absorbed form costs about 2 K heads L d multiply-adds per frame against 2 L d^2 for projecting x,
so it wins while K heads is well under d; :func:`region_attention_form` picks the cheaper form and says
which. The *core* ``(q~, x) -> (A, lse)`` and its backward ``(dA, q~, x, A, lse) -> (dq~, dx)`` are
the fused part: Triton for CUDA tensors, the native csrc kernels for CPU tensors once built, else
:func:`region_attention_core_ref`. ``artlib.ops.backend("region_attention", device)`` says which runs;
``ARTLIB_BACKEND_REGION_ATTENTION`` (or ``ARTLIB_BACKEND``) forces one.
"""

import torch
from torch import Tensor

from artlib.ops.region_attention.forms import (
    ABSORBED_MAX_ROWS_PER_DIM,
    FORMS,
    region_attention_form,
)
from artlib.ops.region_attention.op import (
    REGION_ATTENTION,
    _to_heads,
    _to_rows,
    region_attention_core,
)
from artlib.ops.region_attention.reference import (
    _fold,
    _unfold,
    check_region_attention_args,
    region_attention_core_backward_ref,
    region_attention_core_ref,
    region_attention_ref,
)
from artlib.ops.region_attention.standard import standard_forward

__all__ = [
    "region_attention",
    "region_attention_ref",
    "region_attention_core",
    "region_attention_core_ref",
    "region_attention_core_backward_ref",
    "region_attention_form",
    "check_region_attention_args",
    "FORMS",
    "ABSORBED_MAX_ROWS_PER_DIM",
    "_to_heads",
    "_to_rows",
]


def region_attention(
    query: Tensor,
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    need_weights: bool = False,
    form: str = "auto",
):
    """K region queries attend to the L tokens of their own frame.

    query (..., K, d), x (..., L, d) with the same leading dims (e.g. N, or B T); the parameters in
    nn.MultiheadAttention's layout: in_proj_weight (3d, d), in_proj_bias (3d,) or None,
    out_proj_weight (d, d), out_proj_bias (d,) or None. Returns out (..., K, d), and with
    ``need_weights`` also the per-head attention maps (..., heads, K, L), each row summing to 1.

    Equivalent to ``nn.MultiheadAttention(d, heads, batch_first=True)(query, x, x,
    need_weights=need_weights, average_attn_weights=False)`` on the flattened frames, but the
    ``"absorbed"`` form never projects x to keys and values. ``form="auto"`` picks the cheaper form
    for the shape and device (:func:`region_attention_form`); the standard form runs stock PyTorch
    (projections + SDPA, artlib/ops/region_attention/standard.py), the absorbed one the custom op
    ``artlib::region_attention`` under torch.compile / torch.export and the same host forward and
    backward behind a ``torch.autograd.Function`` in eager mode (artlib/ops/_template.py). On CPU with the native
    kernels, the absorbed form's projections and core run as one C++ call each way.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if isinstance(query, Tensor) and torch.is_autocast_enabled(query.device.type):
        # Custom ops sit outside autocast's op lists, so cast as nn.Linear would: under bf16
        # autocast a LayerNorm hands over fp32 while a Linear hands over bf16 (seen on an H200 in
        # the ART step), a mix the kernels reject.
        dt = torch.get_autocast_dtype(query.device.type)
        query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias = (
            t.to(dt) if isinstance(t, Tensor) else t
            for t in (query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)
        )
    lead, k, _, d = check_region_attention_args(
        query, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads
    )
    if form == "auto":
        form = region_attention_form(k, d, num_heads, query.device)
    args = (*_fold(query, x), in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)
    if form == "standard":
        out, weights = standard_forward(*args, num_heads, need_weights)
    else:  # the custom op under torch.compile / torch.export, the autograd.Function in eager mode
        out, weights = REGION_ATTENTION.apply(*args, num_heads, need_weights)
    return _unfold(out, weights, lead, num_heads, need_weights)
