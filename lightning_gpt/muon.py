"""Muon for the blocks' matrices and AdamW for the other weights, in one optimizer (fp32 throughout).

PyTorch's ``torch.optim.Muon`` orthogonalizes in bfloat16, which is very slow on CPUs without native
bf16 (benchmarks/README.md); this one runs the Newton-Schulz iteration in float32. Updates are scaled
by ``0.2 * sqrt(max(rows, cols))`` so that their RMS matches AdamW's and one learning rate and weight
decay serve both kinds of group (Liu et al. 2025, "Muon is scalable for LLM training").
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic iteration


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T of ``matrix`` = U S V^T [rows, cols], by a Newton-Schulz iteration in fp32."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.float()
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # [small, large]: the Gram matrix is the small one
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + torch.addmm(gram, gram, gram, beta=b, alpha=c) @ x
    return (x if wide else x.T).to(matrix.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with ``muon=True`` (2-D matrices) get Muon, the others AdamW (decoupled decay).

    Muon: momentum buffer ``m = momentum * m + g``, Nesterov update ``g + momentum * m``, orthogonalized
    and scaled by ``0.2 * sqrt(max(rows, cols))``; weight decay ``lr * weight_decay`` as in AdamW.
    """

    def __init__(
        self,
        params: Iterable[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum, muon=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups must hold 2-D matrices only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if decay:
                    p.mul_(1.0 - lr * decay)
                if group["muon"]:
                    buffer = state.setdefault("momentum_buffer", torch.zeros_like(p))
                    buffer.mul_(group["momentum"]).add_(p.grad)
                    update = orthogonalize(p.grad.add(buffer, alpha=group["momentum"]))
                    p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
                    continue
                beta1, beta2 = group["betas"]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(p.grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                bias1, bias2 = 1.0 - beta1 ** state["step"], 1.0 - beta2 ** state["step"]
                denominator = (exp_avg_sq / bias2).sqrt_().add_(group["eps"])
                p.addcdiv_(exp_avg, denominator, value=-lr / bias1)
        return loss
