"""Attention scores against values computed by hand, and the Transformer's attention against an
explicit softmax(Q K^T / sqrt(d_k)) V."""

from __future__ import annotations

import math

import pytest
import torch

from attnmt.errors import ConfigError
from attnmt.models.attention import Attention, masked_softmax
from attnmt.models.transformer import MultiHeadAttention

# One query (2-d) and two keys (2-d); weights set by hand below.
Q = torch.tensor([[[1.0, 2.0]]])  # (B=1, T=1, 2)
K = torch.tensor([[[3.0, -1.0], [0.5, 0.5]]])  # (B=1, S=2, 2)
MASK = torch.tensor([[True, True]])


def set_weights(attn: Attention, **tensors):
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(attn, name).weight.copy_(torch.tensor(value))


def test_dot_score():
    attn = Attention(2, 2, score="dot")
    scores = attn.scores(Q, attn.project_keys(K))
    # q.k: 1*3 + 2*-1 = 1 ; 1*0.5 + 2*0.5 = 1.5
    torch.testing.assert_close(scores, torch.tensor([[[1.0, 1.5]]]))


def test_general_score():
    attn = Attention(2, 2, score="general")
    set_weights(attn, W_a=[[2.0, 0.0], [1.0, 1.0]])  # W_a k = (2 k1, k1 + k2)
    scores = attn.scores(Q, attn.project_keys(K))
    # k=(3,-1): W k = (6, 2), q.Wk = 6 + 4 = 10 ; k=(.5,.5): W k = (1, 1), q.Wk = 1 + 2 = 3
    torch.testing.assert_close(scores, torch.tensor([[[10.0, 3.0]]]))


@pytest.mark.parametrize("score", ["concat", "additive"])
def test_concat_and_additive_score(score):
    attn = Attention(2, 2, score=score, hidden_size=2)
    set_weights(attn, W_q=[[1.0, 0.0], [0.0, 1.0]], W_k=[[1.0, 1.0], [0.0, -1.0]], v_a=[[1.0, -2.0]])
    scores = attn.scores(Q, attn.project_keys(K))
    # W_q q = (1, 2).  k=(3,-1): W_k k = (2, 1) -> tanh(3), tanh(3) -> tanh(3) - 2 tanh(3) = -tanh(3)
    # k=(.5,.5): W_k k = (1, -.5) -> tanh(2) - 2 tanh(1.5)
    expected = torch.tensor([[[-math.tanh(3.0), math.tanh(2.0) - 2 * math.tanh(1.5)]]])
    torch.testing.assert_close(scores, expected)


def test_context_is_the_weighted_sum_and_padding_gets_zero_weight():
    attn = Attention(2, 2, score="dot")
    keys = torch.cat([K, torch.tensor([[[9.0, 9.0]]])], dim=1)  # a third (padding) position
    mask = torch.tensor([[True, True, False]])
    context, weights = attn(Q, attn.project_keys(keys), keys, mask)
    expected_w = torch.softmax(torch.tensor([1.0, 1.5]), 0)
    torch.testing.assert_close(weights[0, 0, :2], expected_w)
    assert weights[0, 0, 2].item() == 0.0
    torch.testing.assert_close(context[0, 0], expected_w @ K[0])


def test_masked_softmax_rows_sum_to_one():
    scores = torch.randn(3, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    w = masked_softmax(scores, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
    assert torch.all(w.masked_select(~mask.unsqueeze(1).expand_as(w)) == 0)


def test_bad_scores_are_config_errors():
    with pytest.raises(ConfigError, match="model.attention.score='cosine' is not one of dot, general, concat"):
        Attention(4, 4, score="cosine")
    with pytest.raises(ConfigError, match="score=dot needs equal"):
        Attention(4, 8, score="dot")


def explicit_attention(mha: MultiHeadAttention, x, mem, mask, scale: bool):
    """softmax(Q K^T / sqrt(d_k)) V per head, written out from the module's weights."""
    B, T, D = x.shape
    H, dk = mha.num_heads, D // mha.num_heads
    q = (x @ mha.q_proj.weight.T + mha.q_proj.bias).view(B, T, H, dk).transpose(1, 2)
    k = (mem @ mha.k_proj.weight.T + mha.k_proj.bias).view(B, -1, H, dk).transpose(1, 2)
    v = (mem @ mha.v_proj.weight.T + mha.v_proj.bias).view(B, -1, H, dk).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / (math.sqrt(dk) if scale else 1.0)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    w = torch.softmax(scores, -1)  # (B, H, T, S)
    out = (w @ v).transpose(1, 2).reshape(B, T, D)
    return out @ mha.out_proj.weight.T + mha.out_proj.bias, w


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_transformer_attention_matches_explicit_formula(scale, need_weights):
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, num_heads=4, dropout=0.0, scale_scores=scale).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out, w = mha(x, *mha.project_kv(mem), mask[:, None, None, :], need_weights=need_weights)
    ref_out, ref_w = explicit_attention(mha, x, mem, mask, scale)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    else:
        assert w is None
