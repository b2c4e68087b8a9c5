"""Properties every model must have, checked through the common seq2seq interface."""

from __future__ import annotations

import pytest
import torch

from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from attnmt.decode.search import beam_search, greedy_search
from attnmt.models.base import Seq2Seq, select_batch

from conftest import MODELS, build_tiny_model

# Luong's three scores and input feeding on/off, LSTM cells, a post-norm Transformer.
VARIANTS = [(m, []) for m in MODELS] + [
    ("rnn_luong", ["model.attention.score=dot"]),
    ("rnn_luong", ["model.attention.score=concat", "model.input_feeding=false"]),
    ("rnn_luong", ["model.rnn_type=lstm", "model.decoder_layers=2", "model.encoder_layers=2"]),
    ("rnn_bahdanau", ["model.rnn_type=lstm", "model.decoder_layers=2"]),
    ("transformer", ["model.norm_first=false"]),
]
IDS = [m + "".join(f"[{o.split('.')[-1]}]" for o in ov) for m, ov in VARIANTS]
V = 50


def random_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    src = torch.full((len(lengths), S), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, V, (n - 1,), generator=g)
        src[i, n - 1] = EOS_ID
    return src, src != PAD_ID


def random_targets(B: int, T: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randint(4, V, (B, T), generator=g)
    tgt[:, 0] = BOS_ID
    return tgt


@pytest.fixture(params=VARIANTS, ids=IDS)
def model(request) -> Seq2Seq:
    name, overrides = request.param
    return build_tiny_model(name, V, overrides)


def test_padding_invariance(model):
    """A sentence's outputs do not change when it is batched with longer sentences."""
    src, mask = random_batch([5, 9, 3])
    tgt = random_targets(3, 6)
    with torch.no_grad():
        batched = model(src, mask, tgt)  # (3, T, V)
        for i, n in enumerate([5, 9, 3]):
            alone = model(src[i : i + 1, :n], mask[i : i + 1, :n], tgt[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-4)


def test_attention_is_a_distribution_over_real_source_tokens(model):
    src, mask = random_batch([4, 8, 6])
    tgt = random_targets(3, 5)
    with torch.no_grad():
        enc = model.encode(src, mask, need_attention=True)
        _, attn = model.decode(enc, tgt, need_attention=True)
    cross = attn["cross"]  # (B, L, H, T, S)
    assert cross.dim() == 5 and cross.shape[0] == 3 and cross.shape[3:] == (5, 8)
    torch.testing.assert_close(cross.sum(-1), torch.ones_like(cross.sum(-1)))
    padding = ~mask[:, None, None, None, :].expand_as(cross)
    assert torch.all(cross[padding] == 0.0)
    if "encoder_self" in enc:
        w = enc["encoder_self"]  # (B, L, H, S, S)
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
        assert torch.all(w[~mask[:, None, None, None, :].expand_as(w)] == 0.0)


def test_causal_masking(model):
    """The output at step t does not change when target tokens after t change."""
    src, mask = random_batch([7, 5])
    tgt = random_targets(2, 8)
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(4, V, (2, 3), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, b = model(src, mask, tgt), model(src, mask, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_incremental_decoding_equals_teacher_forcing(model):
    """decode_step from the cached state gives the teacher-forced log-probabilities (1e-5)."""
    src, mask = random_batch([6, 9, 4])
    tgt = random_targets(3, 7)
    with torch.no_grad():
        enc = model.encode(src, mask)
        full, attn_full = model.decode(enc, tgt, need_attention=True)
        state = model.init_state(enc)
        steps, step_attn = [], []
        for t in range(tgt.size(1)):
            logits, state, attn = model.decode_step(enc, state, tgt[:, t], need_attention=True)
            steps.append(logits)
            step_attn.append(attn["cross"])
    torch.testing.assert_close(
        torch.stack(steps, 1).log_softmax(-1), full.log_softmax(-1), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(torch.stack(step_attn, 3), attn_full["cross"], atol=1e-5, rtol=1e-5)


def test_state_reordering_follows_the_batch(model):
    """Selecting batch rows of the encoder output and state equals decoding those rows alone
    (what beam search relies on)."""
    src, mask = random_batch([6, 9, 4])
    tgt = random_targets(3, 4)
    index = torch.tensor([2, 0, 0])
    with torch.no_grad():
        enc = model.encode(src, mask)
        state = model.init_state(enc)
        for t in range(3):
            _, state, _ = model.decode_step(enc, state, tgt[:, t])
        enc_r, state_r = select_batch(enc, index), select_batch(state, index)
        logits_r, _, _ = model.decode_step(enc_r, state_r, tgt[index, 3])
        full = model(src[index], mask[index], tgt[index])
    torch.testing.assert_close(logits_r, full[:, 3], atol=1e-5, rtol=1e-5)


def test_transformer_masks_suit_the_cuda_attention_kernels(monkeypatch):
    """CUDA's fused attention kernels reject a mask whose last (key) dimension is broadcast, e.g. a
    ``(1, 1)`` mask over ``S`` keys ("last dimension must be contiguous"; the CPU accepts it). Every
    mask the Transformer hands to ``scaled_dot_product_attention`` is None or has that dimension in
    memory: encoding, teacher-forced decoding (causal and full-context) and incremental decoding."""
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []

    def spy(q, k, v, attn_mask=None, **kwargs):
        if attn_mask is not None:
            full = attn_mask.expand(q.size(0), q.size(1), q.size(2), k.size(2))  # (B, H, T, S)
            seen.append((tuple(full.shape), full.stride(-1)))
        else:
            seen.append((None, 1))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = build_tiny_model("transformer", V)
    src, mask = random_batch([6, 9, 4])
    tgt = random_targets(3, 7)
    with torch.no_grad():
        enc = model.encode(src, mask)
        model.decode(enc, tgt)
        model.decode(enc, tgt, full_context=True)
        state = model.init_state(enc)
        for t in range(4):
            _, state, _ = model.decode_step(enc, state, tgt[:, t])
    layers = 2 * len(model.decoder)  # self- and cross-attention per decoder layer
    assert len(seen) == len(model.encoder) + 2 * layers + 4 * layers
    assert [shape for shape, stride in seen if stride != 1 and shape[-1] > 1] == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="decoding on a GPU needs a CUDA device; none here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transformer_decoding_on_cuda_equals_the_cpu(dtype):
    """The Transformer's greedy and beam search run on a CUDA device in fp32 and under bf16 autocast
    (CUDA's attention kernels, not the CPU's); in fp32 they choose the CPU's tokens with its scores."""
    model = build_tiny_model("transformer", V)
    src, mask = random_batch([6, 9, 4, 7])
    cpu_greedy, cpu_beam = greedy_search(model, src, mask), beam_search(model, src, mask, 3, 0.6, 1.5)
    gpu, src, mask = model.cuda(), src.cuda(), mask.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        greedy, beam = greedy_search(gpu, src, mask), beam_search(gpu, src, mask, 3, 0.6, 1.5)
        beam_1 = beam_search(gpu, src, mask, 1, 0.0, 1.5)
    assert len(greedy) == len(beam) == len(beam_1) == 4
    assert [h[0].tokens for h in beam_1] == [h.tokens for h in greedy]  # beam 1 is greedy, on the GPU too
    if dtype == torch.float32:
        assert [h.tokens for h in greedy] == [h.tokens for h in cpu_greedy]
        assert [h[0].tokens for h in beam] == [h[0].tokens for h in cpu_beam]
        for a, b in zip(beam, cpu_beam):
            assert a[0].score == pytest.approx(b[0].score, abs=1e-4)


@pytest.mark.parametrize("tie", [True, False])
def test_tied_embeddings_are_one_matrix_that_every_use_trains(tie):
    """Vaswani et al. (2017) section 3.4: one weight matrix for the source and target embeddings
    and the output projection (a joint vocabulary); ``model.tie_embeddings=false`` gives three."""
    model = build_tiny_model("transformer", V, [f"model.tie_embeddings={str(tie).lower()}"])
    vocabulary_matrices = [p for p in model.parameters() if p.dim() == 2 and p.size(0) == V]  # (V, D) each
    assert len(vocabulary_matrices) == (1 if tie else 3)
    if not tie:
        return
    shared = vocabulary_matrices[0]
    src, mask = random_batch([7, 5])
    tgt_in = random_targets(2, 6)
    in_src, in_tgt = set(src[mask].tolist()), set(tgt_in.flatten().tolist())
    unused = [t for t in range(4, V) if t not in in_src | in_tgt]
    predicted, never_seen = unused[0], unused[1]
    model(src, mask, tgt_in)[..., predicted].sum().backward()  # (B, T) logits of one token
    used = shared.grad.abs().sum(1) > 0  # (V,) rows that received a gradient
    assert used[predicted]  # as the output projection
    assert all(used[t] for t in in_src - in_tgt) and all(used[t] for t in in_tgt - in_src)  # as embeddings
    assert not used[never_seen] and not used[PAD_ID]
