"""attnmt.ops: each hand-optimised kernel computes exactly what the plain formulation beside its
call computes (values and gradients), and every model gives the same results with them on or off."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attnmt.ops import (
    Dropout,
    FusedRNNStep,
    RNNStep,
    additive_scores,
    bidirectional_rnn,
    dropout,
    smoothed_cross_entropy,
)
from attnmt.utils.allocator import keep_freed_memory

from conftest import MODELS, build_tiny_model


def outputs_and_gradients(model, fast: bool, monkeypatch):
    """Teacher-forced logits, cross-attention and every parameter's gradient of a fixed loss."""
    monkeypatch.setattr("attnmt.ops.switch.ENABLED", fast)
    torch.manual_seed(1)
    src = torch.randint(4, 50, (3, 7))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 2 + [False] * 5])
    tgt = torch.randint(4, 50, (3, 6))
    model.zero_grad()
    enc = model.encode(src, mask)
    logits, attn = model.decode(enc, tgt, need_attention=True)
    loss = (logits.log_softmax(-1) * torch.randn_like(logits)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), attn["cross"].detach(), grads


@pytest.mark.parametrize("name, overrides", [
    *[(m, []) for m in MODELS],
    ("rnn_bahdanau", ["model.rnn_type=lstm", "model.encoder_layers=2", "model.decoder_layers=2"]),
    ("rnn_luong", ["model.input_feeding=false", "model.rnn_type=lstm"]),
    ("rnn_luong", ["model.attention.score=concat"]),
])
def test_every_model_computes_the_same_with_the_fast_kernels_on_and_off(name, overrides, monkeypatch):
    model = build_tiny_model(name, overrides=overrides).double().train()  # dropout 0: same function
    fast = outputs_and_gradients(model, True, monkeypatch)
    plain = outputs_and_gradients(model, False, monkeypatch)
    torch.testing.assert_close(fast[0], plain[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(fast[1], plain[1], rtol=0, atol=1e-10)
    assert fast[2].keys() == plain[2].keys() and len(fast[2]) == len(list(model.parameters()))
    for key in fast[2]:
        torch.testing.assert_close(fast[2][key], plain[2][key], rtol=0, atol=1e-10, msg=key)


def attention_inputs(batch: int = 1):
    """A MultiHeadAttention (2 heads of 4) in float64 and its inputs: 3 queries, 5 keys (the last
    one masked out in the second sentence), repeated ``batch`` times."""
    from attnmt.models.transformer import MultiHeadAttention

    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, dropout=0.3).double().train()
    query, memory = torch.randn(2, 3, 8, dtype=torch.double), torch.randn(2, 5, 8, dtype=torch.double)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., 4] = False
    k, v = mha.project_kv(memory.repeat(batch, 1, 1))
    return mha, query.repeat(batch, 1, 1), k, v, mask.repeat(batch, 1, 1, 1)


def test_fast_attention_dropout_drops_attention_weights_with_the_right_scale(monkeypatch):
    """With dropout on CPU and the fast kernels on, attention is Eq. 1 written out with the fast
    dropout on the weights after the softmax: the same as the formula with the same mask, kept
    weights scaled by 1 / (1 - p)."""
    monkeypatch.setattr("attnmt.ops.switch.ENABLED", True)
    mha, query, k, v, mask = attention_inputs()
    torch.manual_seed(7)
    got = mha(query, k, v, mask)[0]
    # The same draws give the same mask: the fast dropout of ones of the weights' shape (B, H, T, S).
    torch.manual_seed(7)
    kept = dropout(torch.ones(2, 2, 3, 5, dtype=torch.double), 0.3)
    scale = 65536 / (65536 - round(0.3 * 65536))  # 1 / (1 - p), p rounded to 1/65536
    assert kept.unique().tolist() == [0.0, pytest.approx(scale, rel=1e-12)] and abs(scale - 1 / 0.7) < 1e-4
    assert 0.0 < (kept == 0).double().mean() < 0.5  # some weights dropped, most kept
    q = query @ mha.q_proj.weight.T + mha.q_proj.bias
    q = q.view(2, 3, 2, 4).transpose(1, 2)  # (B, H, T, d_k)
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask, float("-inf"))  # 1 / sqrt(d_k) = 1/2
    heads = (torch.softmax(scores, -1) * kept) @ v  # (B, H, T, d_k)
    expected = heads.transpose(1, 2).reshape(2, 3, 8) @ mha.out_proj.weight.T + mha.out_proj.bias
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    mha.eval()
    assert not torch.allclose(mha(query, k, v, mask)[0], got, atol=1e-3)  # dropout did drop something


def test_attention_with_dropout_has_the_same_distribution_with_the_fast_kernels_on_and_off(monkeypatch):
    """Dropout > 0: the fast path (Eq. 1 written out, the fast mask) and the plain one (PyTorch's
    scaled_dot_product_attention with its own dropout) draw different masks, so their outputs
    are compared over many draws: 4000 copies of one batch, each with its own mask. Both means
    are the output without dropout, and the spread of both is the same."""
    mha, query, k, v, mask = attention_inputs(batch=4000)
    with torch.no_grad():
        exact = mha.eval()(query[:2], k[:2], v[:2], mask[:2])[0]
        mha.train()
        out = {}
        for fast in (True, False):
            monkeypatch.setattr("attnmt.ops.switch.ENABLED", fast)
            torch.manual_seed(3)
            out[fast] = mha(query, k, v, mask)[0].view(4000, 2, 3, 8)
    spread = out[False].std(0)
    assert spread.min() > 0.01  # dropout changes every output
    for fast in (True, False):
        # 4000 draws: the mean is within a few standard errors (spread / sqrt(4000)) of the exact one.
        error = (out[fast].mean(0) - exact).abs() / (spread / 4000**0.5)
        assert error.max() < 5, (fast, error.max())
    torch.testing.assert_close(out[True].std(0), spread, rtol=0.1, atol=0)


def test_the_task_loss_is_the_same_with_the_fast_kernels_on_and_off(monkeypatch):
    from attnmt.train.task import TranslationTask

    task = TranslationTask(build_tiny_model("transformer").double(), optimizer=torch.optim.Adam)
    batch = {"src": torch.randint(4, 50, (3, 7)), "src_mask": torch.ones(3, 7, dtype=torch.bool),
             "tgt_in": torch.randint(4, 50, (3, 5)), "tgt_out": torch.randint(4, 50, (3, 5))}
    batch["tgt_out"][1, 3:] = 0  # padding
    got = {}
    for fast in (True, False):
        monkeypatch.setattr("attnmt.ops.switch.ENABLED", fast)
        task.zero_grad()
        loss, ntokens = task.loss(batch, 0.1)
        loss.backward()
        got[fast] = loss.item(), ntokens.item(), task.model.generator.weight.grad.clone()
    assert got[True][:2] == (pytest.approx(got[False][0], rel=1e-12), 13)
    torch.testing.assert_close(got[True][2], got[False][2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("rnn_type,layers", [("gru", 1), ("lstm", 1), ("gru", 2)])
def test_rnn_encoder_equals_a_packed_bidirectional_rnn(rnn_type, layers):
    """The encoder runs each direction over the padded batch (the backward one on sentences
    reversed in place); its states and all gradients must equal the packed nn.GRU/nn.LSTM whose
    parameters it uses, and be zero at padding."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    rnn_class = torch.nn.GRU if rnn_type == "gru" else torch.nn.LSTM
    encoder = rnn_class(8, 6, layers, batch_first=True, bidirectional=True).double()
    x = torch.randn(5, 7, 8, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([7, 3, 5, 1, 7])
    ours = bidirectional_rnn(encoder, x, lengths)
    packed, _ = encoder(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    theirs, _ = pad_packed_sequence(packed, batch_first=True, total_length=7)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert ours[1, 3:].abs().max() == 0 and ours[3, 1:].abs().max() == 0
    probe = torch.randn_like(ours)
    inputs = [x, *encoder.parameters()]
    for a, b in zip(torch.autograd.grad((ours * probe).sum(), inputs),
                    torch.autograd.grad((theirs * probe).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rnn_type,layers", [("gru", 1), ("lstm", 1), ("gru", 2), ("lstm", 2)])
def test_rnn_decoder_step_equals_nn_rnn(rnn_type, layers):
    """The decoder's hand-written step (layer 0's embedding projection computed for all steps at
    once) gives nn.GRU/nn.LSTM's output, state and gradients with the same parameters."""
    torch.manual_seed(0)
    rnn_class = torch.nn.GRU if rnn_type == "gru" else torch.nn.LSTM
    rnn = rnn_class(5 + 6, 6, layers, batch_first=True).double()
    emb, context = torch.randn(4, 1, 5, dtype=torch.double), torch.randn(4, 6, dtype=torch.double)
    h = torch.randn(4, layers, 6, dtype=torch.double)
    state = {"h": h, **({"c": torch.randn_like(h)} if rnn_type == "lstm" else {})}
    fused, plain = FusedRNNStep(rnn, 5), RNNStep(rnn)
    ours, ours_state = fused(fused.inputs(emb)[0], context, state)
    theirs, theirs_state = plain(plain.inputs(emb)[0], context, state)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    for key in state:
        torch.testing.assert_close(ours_state[key], theirs_state[key], rtol=0, atol=1e-12)
    params = list(rnn.parameters())
    probe = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad((ours * probe).sum(), params),
                    torch.autograd.grad((theirs * probe).sum(), params)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_loss_equals_pytorch_cross_entropy_and_its_gradient(eps, dtype):
    torch.manual_seed(0)
    logits = (torch.randn(257, 61, dtype=dtype) * 6).requires_grad_()
    target = torch.randint(0, 61, (257,))
    target[::5] = 0  # padding
    ref = F.cross_entropy(logits, target, ignore_index=0, label_smoothing=eps, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref * 0.37, logits)
    got = smoothed_cross_entropy(logits, target, eps, ignore_index=0)
    (got_grad,) = torch.autograd.grad(got * 0.37, logits)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert got.item() == pytest.approx(ref.item(), rel=tol)
    assert torch.allclose(got_grad, ref_grad, atol=tol, rtol=0)
    assert got_grad[::5].abs().max() == 0  # padding rows get no gradient


def test_fused_loss_survives_extreme_logits():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([2, 1])  # the first: probability exp(-2000), far below float32's range
    got = smoothed_cross_entropy(logits, target, 0.1, ignore_index=-1)
    ref = F.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum")
    assert torch.isfinite(got) and got.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("queries", [1, 5])  # one decoder step; all steps at once (Luong without feeding)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_additive_scores_equal_the_plain_formula_and_its_gradient(queries, dtype):
    torch.manual_seed(0)
    q = (torch.randn(3, queries, 8, dtype=dtype) * 3).requires_grad_()
    k = (torch.randn(3, 7, 8, dtype=dtype) * 3).requires_grad_()
    v = torch.randn(8, dtype=dtype, requires_grad=True)
    grad = torch.randn(3, queries, 7, dtype=dtype)
    ref = torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)) @ v  # (B, T, S)
    got = additive_scores(q, k, v)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.shape == (3, queries, 7) and torch.allclose(got, ref, atol=tol, rtol=0)
    for g, r in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert torch.allclose(g, r, atol=tol * 10, rtol=0)


def test_dropout_keeps_the_right_share_and_scales_to_the_same_mean():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    for p in (0.1, 0.3, 0.5):
        y = dropout(x, p)
        kept = (y != 0).float().mean().item()
        assert kept == pytest.approx(1 - p, abs=0.003)  # 1e6 draws: 3 standard deviations ~ 0.0015
        assert y.mean().item() == pytest.approx(1.0, abs=0.01)
        values = torch.unique(y).tolist()
        assert values[0] == 0.0 and len(values) == 2
        assert values[1] == pytest.approx(1 / (1 - round(p * 65536) / 65536))
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, y.detach())  # the gradient goes through the same mask and scale
    # Neighbouring elements are independent (the 16-bit slices of one draw are not correlated).
    m = (dropout(x, 0.5) != 0).float().flatten()
    assert torch.corrcoef(torch.stack([m[:-1], m[1:]]))[0, 1].abs() < 0.01


def test_dropout_is_identity_in_eval_and_follows_the_seed():
    layer = Dropout(0.3)
    x = torch.randn(64, 64)
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    torch.manual_seed(5)
    a = layer(x)
    torch.manual_seed(5)
    assert torch.equal(layer(x), a) and not torch.equal(layer(x), a)


def test_allocator_setting_is_applied_on_linux_and_can_be_turned_off(monkeypatch):
    import sys

    if sys.platform.startswith("linux"):
        assert keep_freed_memory() is True
    monkeypatch.setenv("ATTNMT_MALLOPT", "0")
    assert keep_freed_memory() is False


def speed_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("attnmt_bench_speed", path)
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed


def test_gemm_counter_counts_the_rnn_encoder_on_real_tokens_only():
    """benchmarks/speed.py's FLOP count (its speed bounds rest on it) sees the encoder's recurrent
    matrix multiplies although the encoder runs its nn.GRU's weights without calling the module."""
    from conftest import build_tiny_model

    speed = speed_benchmark()
    model = build_tiny_model("rnn_bahdanau")
    counter = speed.GemmCounter(model)
    src = torch.randint(4, 50, (3, 7))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 2 + [False] * 5])
    model.encode(src, mask)
    rnn, w_k = model.encoder.rnn, model.attention.W_k
    e, h = rnn.input_size, rnn.hidden_size
    recurrent = 2 * 2.0 * (7 + 4 + 2) * (e + h) * 3 * h  # 2 directions, 13 real tokens, 3 gates
    keys = 2.0 * (3 * 7) * w_k.in_features * w_k.out_features  # the key projection runs on padding too
    assert counter.flops == recurrent + keys


def test_gemm_counter_counts_the_hand_written_rnn_decoder_step():
    """The decoder steps its nn.GRU's weights by hand (rnn_step): the count still holds the
    recurrent layer's matrix multiplies, once per hypothesis and step, beside the linear layers'."""
    from conftest import build_tiny_model

    speed = speed_benchmark()
    model = build_tiny_model("rnn_bahdanau")
    counter = speed.GemmCounter(model)
    enc = model.encode(torch.randint(4, 50, (3, 7)), torch.ones(3, 7, dtype=torch.bool))
    state = model.init_state(enc)
    counter.flops = 0.0
    model.decode_step(enc, state, torch.full((3,), 5))
    rnn = model.rnn
    recurrent = 2.0 * 3 * (rnn.input_size + rnn.hidden_size) * 3 * rnn.hidden_size  # 3 rows, 3 gates
    linear = sum(
        2.0 * 3 * m.in_features * m.out_features for m in (model.attention.W_q, model.pre_output, model.generator)
    )
    assert counter.flops == recurrent + linear


def test_step_ab_loads_a_git_revision_as_a_separate_package(tmp_path, monkeypatch):
    """benchmarks/step_ab.py compares the working tree with a revision unpacked as attnmt_base:
    that copy must import only itself, never the working tree's attnmt."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode:
        pytest.skip("not a git checkout: step_ab.py needs git archive")
    spec = importlib.util.spec_from_file_location("attnmt_bench_step_ab", root / "benchmarks" / "step_ab.py")
    step_ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_ab)
    step_ab.unpack_base("HEAD", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("attnmt_base")]:
        monkeypatch.delitem(sys.modules, name)
    import attnmt_base.models.rnn as base_rnn

    assert Path(base_rnn.__file__).is_relative_to(tmp_path)
    assert base_rnn.Attention.__module__ == "attnmt_base.models.attention"  # not the working tree's
    loaded = {name: mod for name, mod in sys.modules.items() if name.startswith("attnmt_base")}
    assert "attnmt_base.models.attention" in loaded
    assert all(Path(mod.__file__).is_relative_to(tmp_path) for mod in loaded.values() if getattr(mod, "__file__", None))
    assert step_ab.retarget({"_target_": "attnmt.models.rnn.BahdanauRNN", "x": ["attnmt.a"]}, "attnmt_base") == {
        "_target_": "attnmt_base.models.rnn.BahdanauRNN", "x": ["attnmt_base.a"]}


# -- bf16 autocast (trainer.precision=bf16-mixed) ----------------------------------------------------
# Tolerances: a bf16 value carries 8 significant bits, so one rounding is off by up to 2^-9 of its
# magnitude (0.2%). The kernels must be no less accurate than PyTorch's own bf16 computation of
# the same formula: their error against a float64 reference at most twice PyTorch's, plus 1e-3.


def no_worse_than_pytorch(got, plain, exact) -> None:
    ours = (got.double() - exact).abs().max().item()
    theirs = (plain.double() - exact).abs().max().item()
    assert ours <= 2 * theirs + 1e-3, (ours, theirs)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fused_loss_on_bf16_logits(eps):
    """Autocast gives the loss bf16 logits: it computes in float32 from them (loss to float32
    accuracy) and returns a bf16 gradient (each entry within one bf16 rounding, 2^-9 of 1)."""
    torch.manual_seed(0)
    logits = (torch.randn(257, 61) * 6).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 61, (257,))
    target[::5] = 0
    exact_in = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(exact_in, target, ignore_index=0, label_smoothing=eps, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, exact_in)
    got = smoothed_cross_entropy(logits, target, eps, ignore_index=0)
    (got_grad,) = torch.autograd.grad(got, logits)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert got_grad.dtype == torch.bfloat16
    assert (got_grad.double() - ref_grad).abs().max() <= 2**-9
    assert got_grad[::5].abs().max() == 0


@pytest.mark.parametrize("queries", [1, 5])
def test_additive_scores_in_bf16_are_as_accurate_as_pytorchs(queries):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, queries, 8) * 3, torch.randn(3, 7, 8) * 3, torch.randn(8)
    grad = torch.randn(3, queries, 7)
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    low = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    low_plain = [t.detach().clone().requires_grad_() for t in low]
    ref = torch.tanh(exact[0].unsqueeze(2) + exact[1].unsqueeze(1)) @ exact[2]
    got = additive_scores(*low)
    plain = torch.tanh(low_plain[0].unsqueeze(2) + low_plain[1].unsqueeze(1)) @ low_plain[2]
    assert got.dtype == torch.bfloat16
    no_worse_than_pytorch(got, plain, ref)
    grads = zip(torch.autograd.grad(got, low, grad.to(torch.bfloat16)),
                torch.autograd.grad(plain, low_plain, grad.to(torch.bfloat16)),
                torch.autograd.grad(ref, exact, grad.double()))
    for g, p, r in grads:
        assert g.dtype == torch.bfloat16
        no_worse_than_pytorch(g, p, r)


def test_dropout_on_bf16_keeps_the_share_and_scales_exactly():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, dtype=torch.bfloat16)
    y = dropout(x, 0.3)
    kept = y != 0
    assert y.dtype == torch.bfloat16
    assert abs(kept.float().mean().item() - 0.7) < 0.002
    scale = torch.tensor(65536 / (65536 - round(0.3 * 65536)), dtype=torch.bfloat16)
    assert (y[kept] == scale).all()  # 1 / (1 - p), rounded to bf16 once


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
def test_rnn_decoder_step_under_bf16_autocast_is_as_accurate_as_nn_rnn(rnn_type):
    """Under bf16 autocast the hand-written step's output and state stay as close to the float64
    result as nn.GRU/nn.LSTM's under the same autocast."""
    torch.manual_seed(0)
    rnn = (torch.nn.GRU if rnn_type == "gru" else torch.nn.LSTM)(16 + 32, 32, batch_first=True)
    emb, context = torch.randn(4, 1, 16), torch.randn(4, 32)
    h = torch.randn(4, 1, 32)
    state = {"h": h, **({"c": torch.randn_like(h)} if rnn_type == "lstm" else {})}

    def run(step_class, module, dtype=None):
        step = step_class(module, 16) if step_class is FusedRNNStep else step_class(module)
        return step(step.inputs(emb.to(dtype or emb.dtype))[0], context.to(dtype or emb.dtype),
                    {k: s.to(dtype or s.dtype) for k, s in state.items()})

    exact, exact_state = run(FusedRNNStep, copy.deepcopy(rnn).double(), torch.double)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ours_state = run(FusedRNNStep, rnn)
        theirs, theirs_state = run(RNNStep, rnn)
    no_worse_than_pytorch(ours, theirs, exact)
    for key in state:
        no_worse_than_pytorch(ours_state[key], theirs_state[key], exact_state[key])
