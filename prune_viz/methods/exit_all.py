"""``exit``: every token leaves at the pruning layer through the auxiliary head there.

The trivial baseline behind DToP and MATP (issue 11): with an auxiliary head after block L, the
cheapest "method" is to stop the whole image at L and take the head's prediction as final. It is
DToP with threshold -> 0 and k = 0, written as its own method so tables can name it
(``exit@3`` = this method at layer 3). With several layers, the first one takes everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import EXITED, Decision, MethodSpec, PruneContext


@dataclass(frozen=True)
class ExitParams:
    """No knobs: the layer is the plan's."""


def decide(ctx: PruneContext, params: ExitParams) -> Decision:
    """All Nk alive tokens EXIT with the auxiliary prediction of this layer."""
    if ctx.aux_logits is None:
        raise ValueError("exit needs the auxiliary head's logits at this layer (a backbone with aux heads)")
    nk = ctx.tokens.shape[0]
    return Decision(keep=torch.zeros(0, dtype=torch.long), status=torch.full((nk,), EXITED, dtype=torch.long))


def default_layers(num_blocks: int) -> tuple[int, ...]:
    return (max(1, num_blocks // 4),)


SPEC = MethodSpec(
    name="exit",
    params_cls=ExitParams,
    decide=decide,
    description=(
        "Stops the whole image at the chosen layer and takes the auxiliary head's prediction there as final. "
        "The floor that early-exit methods (DToP, MATP) must beat."
    ),
    needs_aux=True,
    exits=True,
    default_layers=default_layers,
)
