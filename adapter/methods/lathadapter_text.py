"""LatHAdapter's category side (METHOD.md steps 1–3) as one autograd node: the text adapter, the attribute prompts'
normalisation, the category→attribute associations, the attribute-refined prototypes and their cosines with the
attributes (the cone's category→attribute edges).

Written with autograd these are some fifteen nodes and seventy small ops, whose overhead on a CPU outweighs their
matrix products (C × D × D/r); the hand-written backward does the same matrix products and a few elementwise passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lathadapter.adapter.methods.base import mix_with, normalize_backward, unit_rows


@dataclass(frozen=True)
class TextSide:
    """What the category side gives the loss and the logits."""

    prototypes: torch.Tensor  # p_c = q_c / |q_c|, q_c = u_c + β Σ_k w_ck a_k [C, D] (u_c with attr_proto off)
    weights: torch.Tensor  # w_ck = softmax_k(<u_c, a_k> / τ_a) [C, K]
    class_attribute: torch.Tensor  # <p_c, a_k> [C, K]
    attributes: torch.Tensor  # a_k, unit rows [K, D]


class _TextSide(torch.autograd.Function):
    """The category side and its hand-written backward; `text_side` documents the inputs."""

    @staticmethod
    def forward(ctx, text, first, second, prompts, beta, ratio: float, tau: float, attr_proto: bool):
        attributes, prompt_length = unit_rows(prompts)
        hidden, mixed = mix_with(text, first, second, ratio)
        unit, length = unit_rows(mixed)
        text_attribute = unit @ attributes.t()
        weights = torch.softmax(text_attribute / tau, dim=-1)
        if attr_proto:
            prototypes, refined_length = unit_rows(torch.addmm(unit, weights, attributes * beta))
            class_attribute = prototypes @ attributes.t()
        else:
            prototypes, refined_length, class_attribute = unit, length, text_attribute
        ctx.save_for_backward(text, first, second, attributes, prompt_length, hidden, unit, length, weights, beta,
                              prototypes, refined_length)
        ctx.options = (ratio, tau, attr_proto)
        return prototypes, weights, class_attribute, attributes

    @staticmethod
    def backward(ctx, grad_prototypes, grad_weights, grad_class_attribute, grad_attributes):
        (text, first, second, attributes, prompt_length, hidden, unit, length, weights, beta, prototypes,
         refined_length) = ctx.saved_tensors
        ratio, tau, attr_proto = ctx.options
        zeros = torch.zeros_like
        grad_p = zeros(prototypes) if grad_prototypes is None else grad_prototypes
        grad_w = zeros(weights) if grad_weights is None else grad_weights.clone()
        grad_a = zeros(attributes) if grad_attributes is None else grad_attributes
        grad_beta = None
        # grad_p and grad_a are updated in place below, so they must be new tensors, not the upstream ones
        if grad_class_attribute is not None:  # <p_c, a_k> = P Aᵀ
            grad_p = torch.addmm(grad_p, grad_class_attribute, attributes)
            grad_a = torch.addmm(grad_a, grad_class_attribute.t(), prototypes)
        else:
            grad_p, grad_a = grad_p.clone(), grad_a.clone()
        grad_unit = grad_p
        if attr_proto:  # p = q / |q|, q = u + β w A
            grad_unit = normalize_backward(grad_p, prototypes, refined_length)  # ∂/∂q, then ∂/∂u = ∂/∂q
            grad_q_attributes = grad_unit @ attributes.t()  # [C, K]
            grad_w.addcmul_(grad_q_attributes, beta)
            grad_a.addmm_((weights * beta).t(), grad_unit)
            grad_beta = (grad_q_attributes * weights).sum()
        # w = softmax(S / τ), S = u Aᵀ
        grad_s = weights * (grad_w - (weights * grad_w).sum(-1, keepdim=True)) / tau
        grad_unit.addmm_(grad_s, attributes)
        grad_a.addmm_(grad_s.t(), unit)
        # u = m / |m|, m = (1 − α) t + α relu(t W1ᵀ) W2ᵀ
        grad_mixed = normalize_backward(grad_unit, unit, length)
        grad_second = (grad_mixed.t() @ hidden).mul_(ratio)
        grad_hidden = (grad_mixed @ second).mul_(ratio).mul_(hidden > 0)
        grad_first = grad_hidden.t() @ text
        grad_prompts = normalize_backward(grad_a, attributes, prompt_length)  # a = P / |P|
        return None, grad_first, grad_second, grad_prompts, grad_beta, None, None, None


def text_side(text: torch.Tensor, first: torch.Tensor, second: torch.Tensor, prompts: torch.Tensor,
              beta: torch.Tensor, ratio: float, tau: float, attr_proto: bool) -> TextSide:
    """The category side for text features [C, D]: adapter weights `first` [D/r, D] and `second` [D, D/r], residual
    ratio α_t, attribute prompts [K, D], β, the associations' temperature τ_a."""
    return TextSide(*_TextSide.apply(text, first, second, prompts, beta, ratio, tau, attr_proto))
