"""Fused Triton kernels, one file per op; imported lazily so that Triton stays optional."""
