"""Beam search against exhaustive search on a toy model, and against greedy decoding and
teacher-forced scoring on untrained and briefly trained models."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from attnmt.data.dataset import encode_for_eval
from attnmt.data.io import read_parallel
from attnmt.data.tokenizer import EOS_ID
from attnmt.decode import search
from attnmt.decode.checkpoint import load_for_decoding
from attnmt.decode.hypothesis import length_penalty
from attnmt.decode.search import beam_search, greedy_search, max_output_lengths, score_hypotheses
from attnmt.models.base import Seq2Seq

from conftest import MODELS, build_tiny_model

N = 100


class ToyModel(Seq2Seq):
    """A seq2seq model through the common interface whose next-token logits are a fixed random
    table row, picked by a hash of the source and the target prefix: peaked, arbitrary
    distributions on which greedy decoding often misses the most probable output."""

    def __init__(self, vocab_size: int = 6, codes: int = 1009, seed: int = 0):
        super().__init__()
        self.src_vocab_size = self.tgt_vocab_size = vocab_size
        self.codes = codes
        self.register_buffer(
            "table",
            3.0 * torch.randn(codes, vocab_size, generator=torch.Generator().manual_seed(seed)),
        )

    def encode(self, src, src_mask, need_attention=False):
        return {
            "src_mask": src_mask,
            "code": ((src * src_mask).sum(1) * 7 + src_mask.sum(1)) % self.codes,
        }  # (B,)

    def init_state(self, enc):
        return {"code": enc["code"]}

    def next_code(self, code, prev):
        return (code * 31 + prev + 1) % self.codes

    def decode_step(self, enc, state, prev, need_attention=False):
        code = self.next_code(state["code"], prev)  # (B,)
        return self.table[code], {"code": code}, {}  # (B, V)

    def decode(self, enc, tgt_in, need_attention=False):
        code, logits = enc["code"], []
        for t in range(tgt_in.size(1)):
            code = self.next_code(code, tgt_in[:, t])
            logits.append(self.table[code])
        return torch.stack(logits, dim=1), {}  # (B, T, V)


def toy_batch(vocab_size: int, sentences: int = 16) -> tuple[Tensor, Tensor]:
    """Sources of 3 or 5 ordinary tokens (ids 4 and up), padded."""
    src = torch.randint(4, vocab_size, (sentences, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[sentences // 2 :, 3:] = False
    return src.masked_fill(~mask, 0), mask


CAP = (
    3  # output tokens before </s> is forced: max_output_lengths(mask, 0.01, CAP) for these sources
)


def exhaustive_best(model, src, mask, vocab_size) -> list[tuple[list[int], float]]:
    """Per sentence, the most probable of all outputs up to CAP tokens (any id but </s>), scored
    teacher-forced, independently of the searches' incremental decoding."""
    ids = [i for i in range(vocab_size) if i != EOS_ID]
    outputs = [list(s) for n in range(CAP + 1) for s in itertools.product(ids, repeat=n)]
    best = []
    for b in range(src.size(0)):
        scores = score_hypotheses(
            model,
            src[b : b + 1].expand(len(outputs), -1),
            mask[b : b + 1].expand(len(outputs), -1),
            outputs,
        )
        i = max(range(len(outputs)), key=scores.__getitem__)
        best.append((outputs[i], scores[i]))
    return best


@pytest.mark.parametrize("greedy_floor", [False, True])
def test_a_beam_that_never_prunes_finds_the_exhaustive_optimum(greedy_floor):
    model, V = ToyModel(), 6
    src, mask = toy_batch(V)
    assert max_output_lengths(mask, 0.01, CAP).tolist() == [CAP] * 16
    best = exhaustive_best(model, src, mask, V)
    greedy = greedy_search(model, src, mask, 0.01, CAP)
    # Not a trivial case: greedy decoding misses the optimum, which is not always the empty output.
    assert sum(g.log_prob < s - 1e-4 for g, (_, s) in zip(greedy, best)) >= 4
    assert sum(bool(tokens) for tokens, _ in best) >= 4
    # (V - 1) ** CAP beams hold every prefix: with alpha = 0 nothing may be lost, and a sentence may
    # stop early only once no live prefix can beat its best output.
    beam = beam_search(
        model, src, mask, (V - 1) ** CAP, 0.0, 0.01, CAP, n_best=3, greedy_floor=greedy_floor
    )
    for hyps, (tokens, score) in zip(beam, best):
        assert hyps[0].tokens == tokens and hyps[0].log_prob == pytest.approx(score, abs=1e-4)
    rescored = [
        score_hypotheses(
            model,
            src[b : b + 1].expand(3, -1),
            mask[b : b + 1].expand(3, -1),
            [h.tokens for h in hyps],
        )
        for b, hyps in enumerate(beam)
    ]
    for hyps, scores in zip(beam, rescored):
        assert len({tuple(h.tokens) for h in hyps}) == 3
        assert [h.log_prob for h in hyps] == pytest.approx(
            scores, abs=1e-4
        )  # the search's sums are the model's
        assert all(a.score >= b.score for a, b in zip(hyps, hyps[1:]))


def test_narrow_beams_prune_and_the_greedy_floor_holds():
    model, V = ToyModel(), 6
    src, mask = toy_batch(V)
    best = exhaustive_best(model, src, mask, V)
    greedy = greedy_search(model, src, mask, 0.01, CAP)
    for floor in (False, True):
        beam = [h[0] for h in beam_search(model, src, mask, 2, 0.0, 0.01, CAP, greedy_floor=floor)]
        rescored = [
            score_hypotheses(model, src[b : b + 1], mask[b : b + 1], [h.tokens])[0]
            for b, h in enumerate(beam)
        ]
        assert [h.log_prob for h in beam] == pytest.approx(rescored, abs=1e-4)
        assert all(h.log_prob <= s + 1e-4 for h, (_, s) in zip(beam, best))
        assert (
            sum(h.log_prob < s - 1e-4 for h, (_, s) in zip(beam, best)) >= 1
        )  # two beams lose some optima
        if floor:
            assert all(h.log_prob >= g.log_prob - 1e-4 for h, g in zip(beam, greedy))


def test_how_often_the_host_checks_changes_nothing():
    """Finished sentences leave the batch when the host reads "all finished?": every step on a CPU,
    every few on a GPU. Until then their beams run on, but nothing they find may count."""
    model, V = ToyModel(vocab_size=12), 12
    src, mask = toy_batch(V)
    runs = {c: beam_search(model, src, mask, 4, 0.6, 1.5, 6, n_best=3, check_every=c) for c in (1, 3, 8)}
    assert runs[1] == runs[3] == runs[8]
    assert all(len({tuple(h.tokens) for h in hyps}) == 3 for hyps in runs[1])  # the greedy floor may repeat one
    lengths = {len(h.tokens) for hyps in runs[1] for h in hyps}
    assert len(lengths) >= 4 and min(lengths) < 3 < max(lengths)  # sentences end at different steps
    greedy = {c: greedy_search(model, src, mask, 1.5, 6, 0.6, check_every=c) for c in (1, 3, 8)}
    assert greedy[1] == greedy[3] == greedy[8]


class DeviceReads(TorchDispatchMode):
    """Counts the operations that make the host wait for the device, other than search.host."""

    WAITS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.is_nonzero.default, torch.ops.aten.masked_select.default}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func in self.WAITS or boolean_index:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", MODELS)
def test_the_searches_read_the_device_only_every_few_steps(name, monkeypatch):
    """On a GPU each read of a result waits for every queued kernel: the searches read at the
    start, once every check_every steps and at the end, and the models' decoding steps never."""
    model = build_tiny_model(name, vocab_size=40)  # untrained: outputs run to the length cap
    src, mask = toy_batch(40, sentences=8)
    reads = []
    monkeypatch.setattr(search, "host", lambda x: reads.append(x.shape) or x.tolist())
    for size, run in ((1, lambda: greedy_search(model, src, mask, 4.0, 4, check_every=8)),
                      (5, lambda: beam_search(model, src, mask, 5, 0.6, 4.0, 4, n_best=2, check_every=8))):
        reads.clear()
        with DeviceReads() as waits:
            run()
        steps = int(max_output_lengths(mask, 4.0, 4).max()) + 1  # 24: the longest output and its </s>
        assert waits.seen == [], waits.seen
        checks = math.ceil(steps / 8)  # 3
        # greedy: the cap, the checks, tokens/lengths/log-probs; beam: its cap and table (5), greedy's.
        expected = 1 + checks + 3 if size == 1 else (1 + checks) + 1 + checks + 4
        assert len(reads) <= expected, (size, reads)


def first_step_distribution(model: ToyModel, src: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """The toy model's distribution of the first output token for the source ``src`` (1, S)."""
    from attnmt.data.tokenizer import BOS_ID

    code = model.next_code(model.encode(src, mask)["code"], torch.tensor([BOS_ID]))
    return torch.softmax(model.table[code][0] / temperature, -1).double()  # (V,)


def first_tokens(hyps) -> Tensor:
    return torch.tensor([h.tokens[0] if h.tokens else EOS_ID for h in hyps])


def chi_square(tokens: Tensor, p: Tensor) -> float:
    counts = torch.bincount(tokens, minlength=len(p)).double()
    expected = p * len(tokens)
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


N_SAMPLES = 5000
CHI2_CRITICAL_5DF = 20.52  # p = 0.001 for 5 degrees of freedom (6 tokens)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_samples_follow_the_models_distribution(temperature):
    model = ToyModel()
    src, mask = toy_batch(6, sentences=1)
    p = first_step_distribution(model, src, mask, temperature)
    assert p.max() < 0.9  # a distribution with several likely tokens, not a near-certainty
    hyps = search.sample_search(model, src.expand(N_SAMPLES, -1), mask.expand(N_SAMPLES, -1), 1.0, 3,
                                temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert chi_square(first_tokens(hyps), p) < CHI2_CRITICAL_5DF
    other = first_step_distribution(model, src, mask, 3.0 - temperature)  # the other temperature's
    assert chi_square(first_tokens(hyps), other) > 10 * CHI2_CRITICAL_5DF  # the test tells them apart


def test_top_p_draws_only_from_the_nucleus_and_top_k_1_is_greedy():
    model = ToyModel()
    src, mask = toy_batch(6, sentences=1)
    p = first_step_distribution(model, src, mask)
    ranked = p.sort(descending=True)
    top_p = float(ranked.values[:2].sum()) - 1e-3  # the nucleus: the two most probable tokens
    hyps = search.sample_search(model, src.expand(2000, -1), mask.expand(2000, -1), 1.0, 3, top_p=top_p,
                                generator=torch.Generator().manual_seed(0))
    assert set(first_tokens(hyps).tolist()) == set(ranked.indices[:2].tolist())
    src, mask = toy_batch(6)
    greedy = greedy_search(model, src, mask, 1.5, 4, alpha=0.6)
    top_1 = search.sample_search(model, src, mask, 1.5, 4, alpha=0.6, top_k=1, generator=torch.Generator())
    assert top_1 == greedy


def test_the_same_seed_gives_the_same_samples_and_another_seed_others():
    from attnmt.data.dataset import ParallelDataset
    from attnmt.decode.search import translate_dataset
    from attnmt.decode.settings import DecodeSettings

    model = build_tiny_model("transformer", vocab_size=40)
    src, _ = toy_batch(40, sentences=12)
    dataset = ParallelDataset([[t for t in row if t] + [EOS_ID] for row in src.tolist()])

    def sampled(seed: int, batch_tokens: int = 40) -> list:
        settings = DecodeSettings(strategy="sample", seed=seed, n_best=2, batch_tokens=batch_tokens, top_k=10)
        return [[h.tokens for h in hyps] for hyps in translate_dataset(model, dataset, settings, progress=False)]

    first = sampled(1)
    assert sampled(1) == first and sampled(2) != first
    assert all(len(hyps) == 2 for hyps in first) and sum(a != b for a, b in first) > 6  # two draws each


@pytest.fixture(params=MODELS)
def untrained(request):
    return build_tiny_model(request.param, vocab_size=8)


def test_searches_agree_with_each_other_and_with_the_models_scores(untrained):
    """Fast checks of what the trained-model tests below check, through each model's own
    incremental state (caches reordered between beams)."""
    src, mask = toy_batch(8, sentences=6)
    greedy = greedy_search(untrained, src, mask, 1.0, 2)
    one = beam_search(untrained, src, mask, 1, max_len_ratio=1.0, max_len_extra=2)
    assert [h[0].tokens for h in one] == [g.tokens for g in greedy]
    beams = beam_search(untrained, src, mask, 4, 0.0, 1.0, 2, n_best=2, greedy_floor=False)
    rescored = score_hypotheses(
        untrained,
        src.repeat_interleave(2, 0),
        mask.repeat_interleave(2, 0),
        [h.tokens for hyps in beams for h in hyps],
    )
    assert [h.log_prob for hyps in beams for h in hyps] == pytest.approx(rescored, abs=1e-4)
    for i in (0, 5):
        length = int(mask[i].sum())
        single = beam_search(
            untrained,
            src[i : i + 1, :length],
            mask[i : i + 1, :length],
            4,
            0.0,
            1.0,
            2,
            n_best=2,
            greedy_floor=False,
        )
        assert [h.tokens for h in single[0]] == [h.tokens for h in beams[i]]


def gnmt_penalty(length: int, alpha: float) -> float:
    """GNMT's length penalty (Wu et al., 2016, eq. 14), written out here: ``((5 + |Y|) / 6) ** alpha``,
    ``|Y|`` counting ``</s>``."""
    return ((5.0 + length) / 6.0) ** alpha


def test_length_penalty_is_gnmts():
    # Computed by hand: (12 / 6) ** 0.6 = 2 ** 0.6; (17 / 6) ** 0.6; (8 / 6) ** 1; (6 / 6) ** alpha = 1.
    assert length_penalty(7, 0.6) == pytest.approx(1.515716566510398, rel=1e-12)
    assert length_penalty(12, 0.6) == pytest.approx(1.868007444163412, rel=1e-12)
    assert length_penalty(3, 1.0) == pytest.approx(4 / 3, rel=1e-12)
    assert length_penalty(1, 0.6) == pytest.approx(1.0, rel=1e-12)
    assert length_penalty(9, 0.0) == 1.0
    got = length_penalty(torch.tensor([1.0, 7.0, 12.0]), 0.6)  # as beam search calls it, per beam
    assert got.tolist() == pytest.approx([1.0, 1.515716566510398, 1.868007444163412], rel=1e-6)


def test_n_best_scores_are_length_normalised_with_alpha(untrained):
    """Fast checks of the trained-model test below with alpha > 0: each hypothesis' score is its
    log-probability (the model's) over GNMT's penalty of its length, and the n-best are ranked by it."""
    alpha = 0.6
    src, mask = toy_batch(8, sentences=6)
    searches = {
        "beam": beam_search(untrained, src, mask, 4, alpha, 1.0, 2, n_best=3, greedy_floor=False),
        "greedy": [[h] for h in greedy_search(untrained, src, mask, 1.0, 2, alpha)],
    }
    for name, found in searches.items():
        hyps = [h for per_sentence in found for h in per_sentence]
        rescored = score_hypotheses(
            untrained,
            src.repeat_interleave(len(found[0]), 0),
            mask.repeat_interleave(len(found[0]), 0),
            [h.tokens for h in hyps],
        )
        assert [h.log_prob for h in hyps] == pytest.approx(rescored, abs=1e-4), name
        # Lengths vary, and most are not empty (the penalty is 1 for the empty output, |Y| = 1).
        assert len({len(h.tokens) for h in hyps}) > 1 and sum(bool(h.tokens) for h in hyps) > len(hyps) // 2, name
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / gnmt_penalty(len(h.tokens) + 1, alpha), rel=1e-6), name
        for per_sentence in found:
            assert all(a.score >= b.score for a, b in zip(per_sentence, per_sentence[1:])), name


@pytest.fixture(scope="module", params=MODELS)
def trained(request, trained_runs, tiny_data_dir):
    model, tokenizer, _, _ = load_for_decoding(trained_runs[1][request.param][1])
    sources, _ = read_parallel(tiny_data_dir / "test.en", tiny_data_dir / "test.syn")
    dataset = encode_for_eval(tokenizer, sources[:N])
    return model, dataset.collate(list(range(N)))


@pytest.mark.slow
def test_beam_one_equals_greedy(trained):
    model, batch = trained
    greedy = greedy_search(model, batch["src"], batch["src_mask"])
    beam = beam_search(model, batch["src"], batch["src_mask"], beam_size=1)
    assert [b[0].tokens for b in beam] == [g.tokens for g in greedy]
    for b, g in zip(beam, greedy):
        assert b[0].log_prob == pytest.approx(g.log_prob, abs=1e-4)


@pytest.mark.slow
def test_beam_scores_are_the_models_and_never_below_greedy(trained):
    model, batch = trained
    src, mask = batch["src"], batch["src_mask"]
    greedy = [g.tokens for g in greedy_search(model, src, mask)]
    beam = [h[0] for h in beam_search(model, src, mask, beam_size=5, alpha=0.0)]
    greedy_scores = score_hypotheses(model, src, mask, greedy)
    beam_scores = score_hypotheses(model, src, mask, [h.tokens for h in beam])
    for h, rescored in zip(beam, beam_scores):
        assert h.log_prob == pytest.approx(rescored, abs=1e-3)  # the search's sum is the model's
    assert all(b >= g - 1e-4 for b, g in zip(beam_scores, greedy_scores))
    # ... and the beams do the work: many sentences get a strictly more probable translation.
    assert sum(b > g + 1e-3 for b, g in zip(beam_scores, greedy_scores)) >= N // 5


@pytest.mark.slow
def test_n_best_is_sorted_distinct_and_length_normalised(trained):
    model, batch = trained
    alpha = 0.6
    nbest = beam_search(model, batch["src"], batch["src_mask"], beam_size=5, alpha=alpha, n_best=5)
    for hyps in nbest:
        assert len(hyps) == 5
        assert len({tuple(h.tokens) for h in hyps}) == 5
        assert all(a.score >= b.score for a, b in zip(hyps, hyps[1:]))
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / gnmt_penalty(len(h.tokens) + 1, alpha))


@pytest.mark.slow
def test_batched_beam_search_equals_one_sentence_at_a_time(trained):
    model, batch = trained
    batched = beam_search(model, batch["src"], batch["src_mask"], beam_size=4, alpha=0.6, n_best=2)
    for i in range(0, N, 7):
        length = int(batch["src_mask"][i].sum())
        single = beam_search(
            model,
            batch["src"][i : i + 1, :length],
            batch["src_mask"][i : i + 1, :length],
            beam_size=4,
            alpha=0.6,
            n_best=2,
        )[0]
        assert [h.tokens for h in single] == [h.tokens for h in batched[i]]
        for a, b in zip(single, batched[i]):
            assert a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.slow
def test_output_length_cap_is_respected(trained):
    model, batch = trained
    cap = max_output_lengths(batch["src_mask"], 0.2, 1).tolist()
    for run_search in (
        lambda: [[h] for h in greedy_search(model, batch["src"], batch["src_mask"], 0.2, 1)],
        lambda: beam_search(model, batch["src"], batch["src_mask"], 3, 0.0, 0.2, 1, n_best=3),
    ):
        for hyps, limit in zip(run_search(), cap):
            assert hyps and all(len(h.tokens) <= limit and math.isfinite(h.score) for h in hyps)


def test_beam_search_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_best"):
        beam_search(
            None,
            torch.zeros(1, 1, dtype=torch.long),
            torch.ones(1, 1, dtype=torch.bool),
            2,
            n_best=3,
        )
