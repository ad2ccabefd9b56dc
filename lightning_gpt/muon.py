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


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T of ``matrix`` = U S V^T [rows, cols], by a Newton-Schulz iteration in fp32."""
    a, b, c = 3.4445, -4.7750, 2.0315  # Keller Jordan's quintic iteration
    x = matrix.float()
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # [small, large]: the Gram matrix is the small one
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + torch.addmm(gram, gram, gram, beta=b, alpha=c) @ x
    return (x if wide else x.T).to(matrix.dtype)


class MuonAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW``, except for the param groups with ``muon=True`` (2-D matrices): Muon, with
    momentum ``m = momentum * m + g``, Nesterov update ``g + momentum * m`` and AdamW's weight decay."""

    def __init__(self, params: Iterable[dict], lr: float, betas: tuple[float, float] = (0.9, 0.99)):
        super().__init__(params, lr=lr, betas=betas, weight_decay=0.0, foreach=True)  # groups set their own
        for group in self.param_groups:
            group.setdefault("muon", False)
            group.setdefault("momentum", 0.95)
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups must hold 2-D matrices only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if not group["muon"]:
                continue
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if decay:
                    p.mul_(1.0 - lr * decay)
                state = self.state[p]
                if not state:  # a step count too: AdamW's load_state_dict expects one in every state
                    state.update(step=torch.tensor(0.0), momentum_buffer=torch.zeros_like(p))
                state["step"] += 1
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(p.grad)
                update = orthogonalize(p.grad.add(buffer, alpha=momentum))
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
                p.grad = None  # used: AdamW's step below leaves parameters without a gradient alone
        super().step()
        return loss
