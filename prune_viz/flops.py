"""MAC counting: analytic formulas per block kind, and a measured cross-check.

Convention, everywhere in this project: **1 multiply-add = 1 MAC** (what most segmentation
papers print as "GFLOPs"); FLOPs = 2 x MACs. Normalisations, softmax, activations and
element-wise adds are not counted (neither does ``torch.utils.flop_counter``).

The analytic counts are what the engine reports; :func:`measure_macs` runs a callable under
``FlopCounterMode`` and divides its FLOPs by two, so tests can hold the two side by side.
Older torch builds count 0 for ``scaled_dot_product_attention``'s fused CPU kernel; only there
does the measurement force the math backend. Forcing it (``sdpa_kernel``) flips a
*process-wide* switch: every other thread's attention then runs the math kernel too, with
last-bit differences, and overlapping enter/exit from two threads can leave the switch wrong.
The app measures decisions concurrently (the load test caught exactly this), so where the
counter sees the fused kernel nothing is switched.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

MACS_NOTE = "MACs: 1 multiply-add = 1 MAC; FLOPs = 2 x MACs"


def linear_macs(module: nn.Module, n_tokens: int) -> int:
    """MACs of every ``nn.Linear`` inside ``module`` applied to ``n_tokens`` tokens each."""
    return n_tokens * sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def attention_core_macs(n_query: int, n_key: int, dim: int) -> int:
    """QK^T plus attention-times-V over all heads (``dim`` = heads x head_dim)."""
    return 2 * n_query * n_key * dim


def conv_macs(conv: nn.Conv2d, out_h: int, out_w: int) -> int:
    k_h, k_w = conv.kernel_size
    return out_h * out_w * conv.out_channels * (conv.in_channels // conv.groups) * k_h * k_w


@functools.cache
def counter_sees_fused_sdpa() -> bool:
    """Whether FlopCounterMode counts the default CPU attention kernel (torch >= 2.5 does)."""
    q = torch.zeros(1, 1, 4, 8)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return counter.get_total_flops() == 2 * attention_core_macs(4, 4, 8)


def measure_macs(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn()`` under FlopCounterMode -> (MACs = FLOPs / 2, fn's result). Thread-safe
    wherever :func:`counter_sees_fused_sdpa` (else the math backend is forced, see above)."""
    counter = FlopCounterMode(display=False)
    backend = contextlib.nullcontext() if counter_sees_fused_sdpa() else sdpa_kernel(SDPBackend.MATH)
    with backend, counter, torch.no_grad():
        result = fn()
    return counter.get_total_flops() // 2, result
