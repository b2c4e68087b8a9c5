"""Corpus-level sacreBLEU scores on detokenized text, always reported with their signatures."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF, TER


def corpus_scores(hypotheses: list[str], references: list[str], metrics=("bleu", "chrf", "ter")) -> dict:
    """``{"bleu": {"score": .., "signature": ..}, ...}`` for detokenized hypotheses and untouched
    references (one reference per sentence)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    scorers = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
    out = {}
    for name in metrics:
        scorer = scorers[name]()
        result = scorer.corpus_score(hypotheses, [references])
        out[name] = {"score": round(result.score, 2), "signature": str(scorer.get_signature())}
    return out


def bleu(hypotheses: list[str], references: list[str]) -> float:
    return corpus_scores(hypotheses, references, metrics=("bleu",))["bleu"]["score"]
