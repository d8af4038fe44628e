"""The four attribution methods of Ballout et al., batched: token scores for a padded batch.

Every method maps ``(teacher, batch, options)`` to ``(token_scores (B, L), target_scores (B,))``
with zeros outside the text's own tokens. Gradients are taken with respect to the input word
embeddings ``e`` of each token (parameters are frozen, so nothing else is differentiated):

- ``saliency`` — ``‖∂y/∂e‖₂`` per token (non-negative).
- ``input_x_gradient`` — ``e · ∂y/∂e`` per token (signed).
- ``integrated_gradients`` — ``(e − e₀) · ∫₀¹ ∂y/∂e(e₀ + α(e − e₀)) dα`` with the baseline ``e₀``
  = zero vectors at the text's tokens (special and prompt tokens keep their embeddings), the
  integral by Gauss–Legendre quadrature with ``ig_steps`` nodes (captum's default rule). All
  steps of a batch go through the model together, ``internal_batch_size`` rows per pass.
  Token scores add up to ``y(e) − y(e₀)`` (completeness), up to the quadrature error.
- ``attention`` — eager attention maps, averaged over heads, read at the position the teacher
  decides from ([CLS] for an encoder classifier, the last prompt token for a causal LM). Either
  the last layer (``last_layer``) or attention rollout over all layers (``rollout``, Abnar &
  Zuidema 2020: ``Â = ½A + ½I`` per layer, rows renormalised, multiplied bottom-up). Attention
  is not specific to the target label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from distillq.errors import InvalidInputError
from workers.attribution.teachers import Batch, Teacher, eager_attention

Method = Literal["saliency", "input_x_gradient", "integrated_gradients", "attention"]
METHODS: tuple[str, ...] = get_args(Method)
AttentionMode = Literal["last_layer", "rollout"]


@dataclass(frozen=True)
class MethodOptions:
    ig_steps: int = 16
    internal_batch_size: int = 256  # rows per forward/backward pass for integrated gradients
    attention: AttentionMode = "last_layer"


def _gradient(teacher: Teacher, batch: Batch, embeds: Tensor) -> tuple[Tensor, Tensor]:
    """∂(target score)/∂(embeddings) for every example of the batch, and the scores."""
    embeds = embeds.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = teacher.forward(batch, embeds).scores
        (grad,) = torch.autograd.grad(scores.sum(), embeds)
    return grad, scores.detach()


def _masked(scores: Tensor, batch: Batch) -> Tensor:
    return scores.float() * batch.text_mask


def saliency(teacher: Teacher, batch: Batch, opts: MethodOptions) -> tuple[Tensor, Tensor]:
    grad, target = _gradient(teacher, batch, teacher.embed(batch))
    return _masked(grad.float().norm(dim=-1), batch), target


def input_x_gradient(
    teacher: Teacher, batch: Batch, opts: MethodOptions
) -> tuple[Tensor, Tensor]:
    embeds = teacher.embed(batch)
    grad, target = _gradient(teacher, batch, embeds)
    return _masked((grad.float() * embeds.float()).sum(-1), batch), target


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """Nodes and weights on [0, 1], as captum's ``gausslegendre`` rule."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return list(0.5 * (x + 1.0)), list(0.5 * w)


def integrated_gradients(
    teacher: Teacher, batch: Batch, opts: MethodOptions
) -> tuple[Tensor, Tensor]:
    embeds = teacher.embed(batch).detach()
    delta = embeds * batch.text_mask.unsqueeze(-1).to(embeds.dtype)
    baseline = embeds - delta
    alphas, weights = gauss_legendre(opts.ig_steps)
    per_pass = max(1, opts.internal_batch_size // len(batch))
    total = torch.zeros_like(embeds, dtype=torch.float32)
    for i in range(0, len(alphas), per_pass):
        alpha = torch.tensor(alphas[i : i + per_pass], dtype=embeds.dtype, device=embeds.device)
        weight = torch.tensor(weights[i : i + per_pass], device=embeds.device)
        path = baseline + alpha.view(-1, 1, 1, 1) * delta  # (steps, B, L, D)
        grad, _ = _gradient(teacher, batch.repeat(len(alpha)), path.flatten(0, 1))
        total += (grad.float().view(path.shape) * weight.view(-1, 1, 1, 1)).sum(0)
    with torch.no_grad():
        target = teacher.forward(batch, embeds).scores
    return _masked((delta.float() * total).sum(-1), batch), target


def _rollout(maps: tuple[Tensor, ...]) -> Tensor:
    eye = torch.eye(maps[0].shape[-1], device=maps[0].device)
    joint = eye.expand_as(maps[0][:, 0])
    for layer in maps:
        a = 0.5 * layer.float().mean(1) + 0.5 * eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return joint


@torch.no_grad()
def attention(teacher: Teacher, batch: Batch, opts: MethodOptions) -> tuple[Tensor, Tensor]:
    with eager_attention(teacher.model):
        out = teacher.forward(batch, teacher.embed(batch), attentions=True)
    if not out.attentions:
        raise InvalidInputError(f"{type(teacher.model).__name__} returned no attention maps")
    if opts.attention == "rollout":
        joint = _rollout(out.attentions)
    else:
        joint = out.attentions[-1].float().mean(1)
    rows = joint[torch.arange(len(batch), device=joint.device), batch.query]
    return _masked(rows, batch), out.scores


MethodFn = Callable[[Teacher, Batch, MethodOptions], tuple[Tensor, Tensor]]
_REGISTRY: dict[str, MethodFn] = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    "attention": attention,
}


def get_method(name: str) -> MethodFn:
    if name not in _REGISTRY:
        raise InvalidInputError(f"attribution method {name!r} is not one of {list(METHODS)}")
    return _REGISTRY[name]
