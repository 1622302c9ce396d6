"""Which float type training computes in: bf16 where the hardware has units for it, else fp32.

bf16 halves the bytes a matmul moves and runs on AMX / AVX-512 BF16 units on CPUs and on tensor
cores on GPUs; without them (an AVX2-only CPU) PyTorch emulates it and it is many times *slower*
than fp32 (BENCHMARKS.md, "Precision"), so `auto` only picks it where it pays. Weights, optimizer
state and the softmax stay fp32 either way: only the matmuls' inputs are rounded.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def fast_bf16(device: torch.device) -> bool:
    """Does `device` have hardware bf16 matmuls?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # private but stable helpers of torch.cpu; a build without them simply gets fp32
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32" or (precision == "auto" and not fast_bf16(device)):
        return None
    return torch.bfloat16
