"""The one way N models become one batched model's parameters: each named tensor stacked on a new leading
instance dim, trainable where the first model's is ("." becomes "__": nn.Module names cannot hold dots),
and the one way back to N models."""

from __future__ import annotations

import copy
from typing import Callable, TypeVar

import torch
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


def param_key(name: str) -> str:
    """The stacked parameter's key for a model's parameter `name` (nn.Module names cannot contain dots)."""
    return name.replace(".", "__")


def stack_parameters(named: list[dict[str, Tensor]]) -> nn.ParameterDict:
    """{name: [inst, *shape]} from one {name: [*shape]} per instance (all with the same names and shapes)."""
    return nn.ParameterDict({
        param_key(n): nn.Parameter(torch.stack([p[n].detach() for p in named]), requires_grad=first.requires_grad)
        for n, first in named[0].items()})


def unstack_parameters(template: M, p: Callable[[str], Tensor], n: int) -> list[M]:
    """N copies of `template`, the i-th with every parameter `name` set to p(name)[i] (p: a stacked model's `p`)."""
    out = []
    for i in range(n):
        m = copy.deepcopy(template)
        with torch.no_grad():
            for name, param in m.named_parameters():
                param.copy_(p(name)[i])
        out.append(m)
    return out
