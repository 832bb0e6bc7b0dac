"""MAC counting: analytic formulas per block kind, and a measured cross-check.

Convention, everywhere in this project: **1 multiply-add = 1 MAC** (what most segmentation
papers print as "GFLOPs"); FLOPs = 2 x MACs. Normalisations, softmax, activations and
element-wise adds are not counted (neither does ``torch.utils.flop_counter``).

The analytic counts are what the engine reports; :func:`measure_macs` runs a callable under
``FlopCounterMode`` and divides its FLOPs by two, so tests can hold the two side by side.
``FlopCounterMode`` has formulas for the CUDA attention kernels only: on CPU (checked up to
torch 2.14) the fused ``_scaled_dot_product_flash_attention_for_cpu`` counts **0**. We register
the same formula for that op (``custom_mapping``), so the counter sees fused attention on every
torch version this project supports, and nothing is switched. (Forcing the math backend with
``sdpa_kernel`` would flip a *process-wide* switch: every other request's attention would run the
math kernel too, with last-bit differences, and overlapping enter/exit from two threads could
leave the switch wrong; the load test caught exactly this.)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

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


def _cpu_flash_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the fused CPU attention kernel: the formula torch registers for the CUDA ones."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Ops the counter does not know by itself, with their formulas (shapes in, FLOPs out).
_EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa_flop


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=dict(_EXTRA_FORMULAS))


@functools.cache
def counter_sees_fused_sdpa() -> bool:
    """Whether our counter counts the default CPU attention kernel (with the formula above)."""
    q = torch.zeros(1, 1, 4, 8)
    counter = _counter()
    with counter, torch.no_grad():
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return counter.get_total_flops() == 2 * attention_core_macs(4, 4, 8)


def measure_macs(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn()`` under FlopCounterMode -> (MACs = FLOPs / 2, fn's result). Thread-safe: no
    process-wide switch is touched (see the module note)."""
    counter = _counter()
    with counter, torch.no_grad():
        result = fn()
    return counter.get_total_flops() // 2, result
