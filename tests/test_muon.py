"""Muon for the blocks' matrices, AdamW for the rest (``--model.optimizer muon``, the CPU recipe's)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import TINY

from lightning_gpt.errors import UserError
from lightning_gpt.module import GPTModule
from lightning_gpt.muon import MuonAdamW, orthogonalize

VOCAB = "abcdefgh"


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_orthogonalize_keeps_the_shape_and_brings_singular_values_near_one(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3.0
    result = orthogonalize(matrix)
    assert result.shape == matrix.shape and result.dtype == matrix.dtype
    singular = torch.linalg.svdvals(result)
    # The quintic iteration trades exactness for speed: values land around 0.7 .. 1.2, not at 1.
    assert singular.min() > 0.5 and singular.max() < 1.5, singular
    # and the directions are the matrix's: U V^T has the same singular vectors
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), result.flatten(), dim=0) > 0.95


def muon_module(**settings) -> GPTModule:
    return GPTModule(**TINY, vocab=VOCAB, optimizer="muon", decay_steps=10, **settings)


def test_muon_takes_exactly_the_blocks_matrices_and_adamw_the_rest():
    module = muon_module(weight_decay=0.1)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, MuonAdamW)
    named = dict(module.model.named_parameters())  # the tied head appears once, as the embedding
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(named) == len(group_of)
    muon = {name for name, p in named.items() if group_of[id(p)]["muon"]}
    matrices = ["attn.qkv.weight", "attn.proj.weight", "ffn.up.weight", "ffn.down.weight"]
    assert muon == {f"blocks.{i}.{m}" for i in range(2) for m in matrices}
    decayed = {name for name, p in named.items() if group_of[id(p)]["weight_decay"] == 0.1}
    assert decayed == muon | {"token_embedding.weight", "position_embedding.weight"}  # AdamW's matrices


def test_an_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="model.optimizer must be one of"):
        GPTModule(**TINY, optimizer="sgd")


def test_muon_steps_as_written_nesterov_momentum_and_an_rms_like_adamws():
    weight = torch.nn.Parameter(torch.randn(8, 32, generator=torch.Generator().manual_seed(0)))
    optimizer = MuonAdamW([{"params": [weight], "muon": True, "weight_decay": 0.0}], lr=0.1)
    expected, buffer = weight.detach().clone(), torch.zeros(8, 32)
    for seed in (1, 2):
        grad = torch.randn(8, 32, generator=torch.Generator().manual_seed(seed))
        buffer = 0.95 * buffer + grad  # momentum 0.95, the default
        expected -= (
            0.1 * 0.2 * math.sqrt(32) * orthogonalize(grad + 0.95 * buffer)
        )  # scaled by max(rows, cols)
        weight.grad = grad
        optimizer.step()
    torch.testing.assert_close(weight.detach(), expected)


def test_zero_gradients_move_the_weights_only_by_weight_decay():
    module = muon_module(learning_rate=0.1, weight_decay=0.5, warmup_steps=1)
    optimizer = module.configure_optimizers()["optimizer"]
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    for p in module.model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in module.model.named_parameters():
        decay = next(g["weight_decay"] for g in optimizer.param_groups if any(q is p for q in g["params"]))
        torch.testing.assert_close(p, before[name] * (1 - 0.1 * decay), rtol=1e-6, atol=0)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    window = torch.randint(len(VOCAB), (4, 33), generator=torch.Generator().manual_seed(seed))
    return window[:, :-1], window[:, 1:]


def test_muon_learns_and_resumes_exactly_from_its_state_dict():
    torch.manual_seed(0)
    module = muon_module(learning_rate=0.01, warmup_steps=1)
    optimizer = module.configure_optimizers()["optimizer"]
    x, y = batch(0)

    def step() -> float:
        optimizer.zero_grad()
        _, loss = module.model(x, y)
        loss.backward()
        optimizer.step()
        return loss.item()

    losses = [step() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses  # one fixed batch: memorised
    saved = io.BytesIO()
    torch.save({"model": module.model.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    after = [step() for _ in range(3)]
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    module.model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    assert [step() for _ in range(3)] == after
