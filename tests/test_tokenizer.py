"""Sentencepiece models trained elsewhere: ids 0-3 mean <pad>, <unk>, <s>, </s> inside attnmt,
whatever order the model file keeps them in."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm

from attnmt.data.synthetic import generate_pairs
from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from attnmt.errors import DataError

TEXT = [p.src for p in generate_pairs(300, seed=3)]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]  # by attnmt id


def sentencepiece_model(pad_id: int, unk_id: int, bos_id: int, eos_id: int) -> bytes:
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(words) for words in TEXT),
        model_writer=proto,
        vocab_size=60,
        model_type="bpe",
        pad_id=pad_id,
        unk_id=unk_id,
        bos_id=bos_id,
        eos_id=eos_id,
        minloglevel=2,
    )
    return proto.getvalue()


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer(sentencepiece_model(PAD_ID, UNK_ID, BOS_ID, EOS_ID))


@pytest.fixture(scope="module")
def foreign() -> Tokenizer:
    """Joey NMT's and fairseq's layout: <unk> = 0, <pad> = 1."""
    return Tokenizer(sentencepiece_model(pad_id=1, unk_id=0, bos_id=2, eos_id=3))


def test_a_model_with_unk_0_and_pad_1_reads_and_writes_attnmt_ids(ours, foreign):
    assert foreign.src.unk_id() == 0 and foreign.src.pad_id() == 1  # the file's own layout
    known = " ".join(TEXT[0])
    line = known + " Ж"  # a character the model has never seen
    for tok in (ours, foreign):
        ids, known_ids = tok.encode_src([line])[0], tok.encode_tgt([known])[0]
        assert (
            ids[-1] == UNK_ID and ids.count(UNK_ID) == 1 and PAD_ID not in ids
        )  # padding is never text
        assert ids[: len(known_ids)] == known_ids and min(known_ids) > EOS_ID
        assert tok.src_pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == SPECIALS
        assert tok.tgt_pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == SPECIALS
        assert tok.decode_tgt([known_ids]) == [known]
        assert tok.decode_tgt([[PAD_ID]]) == [
            ""
        ]  # padding decodes to nothing, as in attnmt's own models
    # Both models cut known words into the same pieces: the ids beyond 1 agree.
    assert foreign.src_pieces(foreign.encode_src([line])[0]) == ours.src_pieces(
        ours.encode_src([line])[0]
    )


def test_the_swap_survives_a_checkpoint(foreign):
    again = Tokenizer.from_state(foreign.state())
    line = " ".join(TEXT[1]) + " Ж"
    assert (
        again.encode_src([line]) == foreign.encode_src([line])
        and again.encode_src([line])[0][-1] == UNK_ID
    )


def test_other_layouts_of_the_special_ids_are_refused():
    with pytest.raises(
        DataError,
        match=r"<pad>, <unk>, <s>, </s> = \(3, 0, 1, 2\): attnmt needs ids \(0, 1, 2, 3\)",
    ):
        Tokenizer(sentencepiece_model(pad_id=3, unk_id=0, bos_id=1, eos_id=2))
