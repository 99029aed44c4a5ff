"""LatHAdapter's category side (docs/method.md steps 1–3) as one autograd node: the text adapter, the attribute prompts'
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
            # <p_c, a_k> = (<u_c, a_k> + β (w A Aᵀ)_ck) / |q_c|: a [C, K] × [K, K] product, no pass over [C, D]
            gram = attributes @ attributes.t()
            class_attribute = torch.addcmul(text_attribute, weights @ gram, beta).div_(refined_length)
        else:
            prototypes, refined_length, class_attribute, gram = unit, length, text_attribute, None
        ctx.save_for_backward(text, first, second, attributes, prompt_length, hidden, unit, length, weights, beta,
                              prototypes, refined_length, gram, class_attribute)
        ctx.options = (ratio, tau, attr_proto)
        ctx.set_materialize_grads(False)  # an output the loss does not read (<p_c, a_k> without the cone) gets None
        return prototypes, weights, class_attribute, attributes

    @staticmethod
    def backward(ctx, grad_prototypes, grad_weights, grad_class_attribute, grad_attributes):
        (text, first, second, attributes, prompt_length, hidden, unit, length, weights, beta, prototypes,
         refined_length, gram, class_attribute) = ctx.saved_tensors
        ratio, tau, attr_proto = ctx.options
        zeros = torch.zeros_like
        grad_p = zeros(prototypes) if grad_prototypes is None else grad_prototypes
        grad_w = zeros(weights) if grad_weights is None else grad_weights.clone()
        grad_a = zeros(attributes) if grad_attributes is None else grad_attributes.clone()  # updated in place
        grad_s = grad_class_attribute  # ∂/∂S (S = u Aᵀ) from <p, a>, then the softmax's share joins it
        grad_beta = None
        if attr_proto:  # p = q / |q|, q = u + β w A, and <p, a> = (S + β w G) / |q| with G = A Aᵀ
            coefficient = (grad_p * prototypes).sum(-1, keepdim=True)  # the normalisation's <∂p, p>, less |q| ∂|q|
            if grad_class_attribute is not None:
                grad_s = grad_class_attribute / refined_length
                coefficient.add_((grad_class_attribute * class_attribute).sum(-1, keepdim=True))
                grad_gram = (weights.t() @ grad_s).mul_(beta)
                grad_a.addmm_(grad_gram + grad_gram.t(), attributes)
            grad_unit = torch.addcmul(grad_p, prototypes, coefficient, value=-1).div_(refined_length)  # ∂/∂q = ∂/∂u
            grad_a.addmm_((weights * beta).t(), grad_unit)
            # ∂/∂(β w) through q and through <p, a> (G is symmetric): ∂q Aᵀ + ∂S G
            grad_beta_weights = grad_unit @ attributes.t()
            if grad_class_attribute is not None:
                grad_beta_weights.addmm_(grad_s, gram)
            grad_w.addcmul_(grad_beta_weights, beta)
            grad_beta = (grad_beta_weights * weights).sum()
        else:
            grad_unit = grad_p.clone()
        # w = softmax(S / τ), S = u Aᵀ
        grad_softmax = (weights * (grad_w - (weights * grad_w).sum(-1, keepdim=True))).div_(tau)
        grad_s = grad_softmax if grad_s is None else grad_softmax.add_(grad_s)
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
