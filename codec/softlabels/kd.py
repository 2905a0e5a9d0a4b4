"""Knowledge-distillation loss for training code (paper Eq. 1 and Eq. 10)."""

from __future__ import annotations

import torch

from .._args import float_arg
from ..errors import InvalidInputError


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, tau: float = 1.0, *,
            reduction: str = "batchmean", scale_by_tau2: bool = False) -> torch.Tensor:
    """Eq. 10: ``KL(y~ || softmax(S(x) / tau))``.

    ``target_probs`` are the (reconstructed, renormalised, Eq. 9) soft labels y~;
    ``student_logits`` the raw student outputs S(x).  ``reduction="batchmean"`` averages the
    per-sample KL over the batch (the mathematically correct mean of Eq. 10); "sum" and
    "none" are also accepted.  ``scale_by_tau2`` multiplies by tau^2 (Hinton et al.'s
    gradient-scale convention, used by SRe2L-style training scripts).
    """
    if not (isinstance(student_logits, torch.Tensor) and isinstance(target_probs, torch.Tensor)):
        raise InvalidInputError("kd_loss: student logits and target probabilities must be torch tensors")
    if student_logits.shape != target_probs.shape:
        raise InvalidInputError(f"kd_loss: student logits {tuple(student_logits.shape)} and targets "
                                f"{tuple(target_probs.shape)} differ in shape")
    tau = float_arg("kd_loss: tau", tau, 0, lo_open=True)
    logq = torch.log_softmax(student_logits.float() / tau, dim=-1)
    p = target_probs.float()
    kl = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-45)) - logq), torch.zeros_like(p)).sum(-1)
    if reduction == "batchmean":
        out = kl.mean()
    elif reduction == "sum":
        out = kl.sum()
    elif reduction == "none":
        out = kl
    else:
        raise InvalidInputError(f"kd_loss: reduction must be 'batchmean', 'sum' or 'none', got {reduction!r}")
    return out * (tau * tau) if scale_by_tau2 else out


def kl_div(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) for probability rows (0 log 0 = 0); computed in float64 with p and q clamped at 1e-300."""
    p = p.double()
    q = q.double()
    return torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(q.clamp_min(1e-300))),
                       torch.zeros_like(p)).sum(-1)
