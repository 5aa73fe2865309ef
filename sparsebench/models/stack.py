"""The one way N models become one batched model's parameters: each named tensor stacked on a new leading
instance dim, trainable where the first model's is ("." becomes "__": nn.Module names cannot hold dots)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def stack_parameters(named: list[dict[str, Tensor]]) -> nn.ParameterDict:
    """{name: [inst, *shape]} from one {name: [*shape]} per instance (all with the same names and shapes)."""
    return nn.ParameterDict({
        n.replace(".", "__"): nn.Parameter(torch.stack([p[n].detach() for p in named]),
                                           requires_grad=first.requires_grad)
        for n, first in named[0].items()})
