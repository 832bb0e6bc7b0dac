"""MAC counting: analytic formulas per block kind, and a measured cross-check.

Convention, everywhere in this project: **1 multiply-add = 1 MAC** (what most segmentation
papers print as "GFLOPs"); FLOPs = 2 x MACs. Normalisations, softmax, activations and
element-wise adds are not counted (neither does ``torch.utils.flop_counter``).

The analytic counts are what the engine reports; :func:`measure_macs` runs a callable under
``FlopCounterMode`` and divides its FLOPs by two, so tests can hold the two side by side.
``FlopCounterMode`` counts 0 for ``scaled_dot_product_attention`` on CPU unless the math backend
is forced, so the measurement forces it.
"""

from __future__ import annotations

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


def measure_macs(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn()`` under FlopCounterMode (math SDPA) -> (MACs = FLOPs / 2, fn's result)."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
        result = fn()
    return counter.get_total_flops() // 2, result
