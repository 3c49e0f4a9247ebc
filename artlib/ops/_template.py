"""The template every op in :mod:`artlib.ops` follows, and the helper that writes its skeleton.

An op is four layers, each written once:

1. **kernels**: Triton (``artlib/ops/triton/``), native C++ (``csrc/``), the plain-PyTorch reference;
2. **host forward / backward**: two Python functions that pick the kernels for the tensors' backend
   (``artlib.ops.backend(op, device)``) and return plain tensors.  The forward returns the op's
   outputs followed by its *residuals*, the tensors its backward reuses (saved softmax weights, lse,
   ...); the backward takes the outputs' gradients, the saved tensors and the constants and returns
   one gradient per differentiable input;
3. one ``torch.autograd.Function`` over the host functions, for eager mode (a custom op's Python
   dispatch costs more than the op itself at small shapes);
4. one ``torch.library.custom_op`` pair (``artlib::<op>`` and ``artlib::<op>_backward``) over the
   same host functions, with fakes and autograd registered, for ``torch.compile`` / ``torch.export``.

:func:`define_op` writes layers 3 and 4 from layer 2, so an op file holds only its reference, its
host functions, their fakes and the public function that checks arguments and calls
:meth:`HostOp.apply`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["HostOp", "define_op"]


@dataclass(frozen=True)
class HostOp:
    """An op defined by :func:`define_op`: ``apply(*args)`` runs it (the autograd.Function in eager
    mode, the custom op under ``torch.compile``) and returns its ``num_outputs`` outputs (one tensor
    when ``num_outputs == 1``); ``op`` / ``backward_op`` are the custom ops."""

    name: str
    num_outputs: int
    op: Callable
    backward_op: Callable
    function: type

    def apply(self, *args):
        if torch.compiler.is_compiling():  # torch.compile and torch.export see the custom op
            res = self.op(*args)
            res = res if isinstance(res, tuple) else (res,)
        else:
            res = self.function.apply(*args)
        if self.num_outputs == 1:
            return res if isinstance(res, Tensor) else res[0]
        return tuple(res[: self.num_outputs])


def define_op(
    name: str,
    *,
    schema: str,
    num_tensors: int,
    num_outputs: int,
    forward: Callable[..., tuple[Tensor, ...]],
    backward: Callable[..., Sequence[Tensor | None]],
    fake: Callable[..., tuple[Tensor, ...]],
) -> HostOp:
    """Write an op's autograd.Function and custom-op pair over its host ``forward`` / ``backward``.

    name: the op, registered as ``artlib::<name>`` and ``artlib::<name>_backward``.
    schema: the forward's schema: ``num_tensors`` tensor inputs (``Tensor`` or ``Tensor?``) first,
        then the constants, e.g. ``"(Tensor r, Tensor s, float tau) -> (Tensor, Tensor, Tensor)"``.
    forward(*inputs) -> the ``num_outputs`` outputs, then the residuals (fresh tensors, no views of
        the inputs).
    backward(grads, inputs, residuals) -> one gradient per tensor input (None for an input that is
        None); ``grads`` has one entry per output, None for an output nothing depends on (eager mode;
        under torch.compile they are zero-filled), ``inputs`` the forward's inputs.
    fake(*inputs): the forward's outputs and residuals as empty tensors of the right shape and dtype.
    """
    n_out, n_t = num_outputs, num_tensors
    args = schema[schema.index("(") + 1 : schema.index(")")].split(",")
    constants_schema = ", ".join(a.strip() for a in args[n_t:])
    op = torch.library.custom_op(f"artlib::{name}", forward, mutates_args=(), schema=schema)
    op.register_fake(fake)

    def _backward_entry(grads, tensors, residuals, *constants):
        dx = backward(grads, [*tensors, *constants], residuals)
        ref = next(t for t in tensors if t is not None)
        return [ref.new_empty(0) if g is None else g for g in dx]

    def _backward_fake(grads, tensors, residuals, *constants):
        ref = next(t for t in tensors if t is not None)
        return [ref.new_empty(0) if t is None else torch.empty_like(t) for t in tensors]

    bwd = torch.library.custom_op(
        f"artlib::{name}_backward",
        _backward_entry,
        mutates_args=(),
        schema=f"(Tensor[] grads, Tensor?[] tensors, Tensor[] residuals{', ' if constants_schema else ''}"
        f"{constants_schema}) -> Tensor[]",
    )
    bwd.register_fake(_backward_fake)

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_t], *output[n_out:])
        ctx.constants = tuple(inputs[n_t:])
        if len(output) > n_out:
            ctx.mark_non_differentiable(*output[n_out:])

    def _op_backward(ctx, *grads):
        saved = ctx.saved_tensors
        tensors = list(saved[:n_t])
        dx = bwd(list(grads[:n_out]), tensors, list(saved[n_t:]), *ctx.constants)
        return (
            *(None if t is None else g for g, t in zip(dx, tensors)),
            *(None,) * len(ctx.constants),
        )

    op.register_autograd(_op_backward, setup_context=_setup_context)

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            res = forward(*inputs)
            ctx.save_for_backward(*inputs[:n_t], *res[n_out:])
            ctx.constants = tuple(inputs[n_t:])
            ctx.set_materialize_grads(False)  # an unused output costs no zero-filled gradient
            if len(res) > n_out:
                ctx.mark_non_differentiable(*res[n_out:])
            return tuple(res)

        @staticmethod
        def backward(ctx, *grads):
            grads = list(grads[:n_out])
            n_const = len(ctx.constants)
            if all(g is None for g in grads):
                return (None,) * (n_t + n_const)
            saved = ctx.saved_tensors
            dx = backward(grads, [*saved[:n_t], *ctx.constants], list(saved[n_t:]))
            return (*dx, *(None,) * n_const)

    Function.__name__ = Function.__qualname__ = "".join(p.title() for p in name.split("_"))
    return HostOp(name, n_out, op, bwd, Function)
