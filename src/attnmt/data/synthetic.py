"""A deterministic synthetic language pair that behaves like translation.

The source side is English-like (real English words, SVO order, prepositions, adjectives before
the noun). The target side is an invented language whose words are built from syllables by a
seeded generator. The grammar makes translation non-trivial in the ways that matter for studying
attention:

* reordering: the target is verb-final (S O PP V), adjectives follow their noun, prepositions
  become postpositions, and a sentence adverb moves in front of the verb;
* one-to-many: a plural noun becomes ``noun ri``; some verbs translate to two words (``helps`` ->
  ``ada kon``-like light-verb constructions);
* many-to-one: ``will see`` and ``does not see`` fuse into one inflected target verb; determiners
  agree with the target noun's class, so the same source word maps to different target words.

Every target word records the source words it translates, so the generator also writes gold word
alignments in Pharaoh format (``i-j``: 0-based source index ``i``, target index ``j``).

The output depends only on the arguments: :class:`random.Random` with a fixed seed produces the
same sequence on every platform and Python version (>= 3.2), so every machine builds the same data.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from attnmt.utils.io import atomic_write_text

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SRC_LANG, TGT_LANG = "en", "syn"

NOUNS = """
dog cat bird horse cow sheep goat pig duck fish frog mouse rabbit fox wolf bear lion tiger
monkey snake girl boy woman man child baby teacher doctor farmer driver singer dancer painter
student king queen soldier sailor pilot baker cook nurse friend neighbor stranger artist player
writer hunter ball book car house tree flower apple table chair door window cup bottle box bag
hat shoe coat bed lamp clock phone letter picture river lake mountain hill road bridge garden
field forest beach island boat ship train plane bike key ring stone rock star cloud shirt
cake bread egg banana orange carrot potato basket bucket rope ladder hammer drum guitar piano
candle mirror pillow blanket pencil paper map wall roof fence tower castle village market
""".split()

ADJECTIVES = """
big small old young red blue green yellow black white happy sad tall short long heavy light
fast slow quiet loud warm cold new clean dirty bright dark soft hard round sharp brave shy
angry calm busy lazy clever strange tiny huge wooden broken empty famous hungry tired rich poor
pretty ugly
""".split()

# Transitive verbs: (base form, third person singular).
TRANSITIVE = [(v, v + ("es" if v.endswith(("sh", "ch", "s", "x")) else "s")) for v in """
see watch help follow push pull carry paint find like love hate want need visit touch hold
kick catch chase feed wash clean open close build break throw buy sell bring take call greet
draw kiss hug lift drop hide fix cook read miss count check hear know meet
""".split()]
TRANSITIVE += [("carry", "carries"), ("study", "studies"), ("copy", "copies"), ("try", "tries")]
TRANSITIVE = [(b, t) for b, t in TRANSITIVE if not t.endswith("ys") or b.endswith(("ay", "ey", "oy"))]

INTRANSITIVE = [(v, v + ("es" if v.endswith(("sh", "ch", "s", "x")) else "s")) for v in """
sleep run walk jump swim sing dance laugh smile cry wait sit stand fall rest shout dream work
play talk listen climb travel float shine grow arrive leave return hide
""".split()]

IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "mouse": "mice", "fish": "fish",
    "sheep": "sheep", "baby": "babies",
}


def plural_of(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


PREPOSITIONS = "with near under behind in on beside".split()
ADVERBS = "quickly slowly happily quietly often today again carefully".split()
DETERMINERS = "the a this every".split()


@dataclass
class Phrase:
    """Aligned source and target words; ``links`` holds (source index, target index) pairs."""

    src: list[str] = field(default_factory=list)
    tgt: list[str] = field(default_factory=list)
    links: list[tuple[int, int]] = field(default_factory=list)

    def __add__(self, other: Phrase) -> Phrase:
        s, t = len(self.src), len(self.tgt)
        return Phrase(
            self.src + other.src,
            self.tgt + other.tgt,
            self.links + [(i + s, j + t) for i, j in other.links],
        )

    def join(self, *others: Phrase) -> Phrase:
        out = self
        for o in others:
            out = out + o
        return out

    def pharaoh(self) -> str:
        return " ".join(f"{i}-{j}" for i, j in sorted(self.links))


def word(src: list[str], tgt: list[str]) -> Phrase:
    """All source words align to all target words (a minimal translation unit)."""
    return Phrase(list(src), list(tgt), [(i, j) for i in range(len(src)) for j in range(len(tgt))])


def src_only(w: str) -> Phrase:
    return Phrase([w], [], [])


class Lexicon:
    """Source words mapped to invented target words, built from a seeded syllable generator."""

    ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "tr"]
    VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
    CODAS = ["", "", "", "n", "r", "l", "s", "k"]

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = {"ri", "ta", "mu", "e", "lo", "ka", "un", "na", "sei", "ve"}
        self.noun = {n: self._new(2, 3) for n in NOUNS}
        self.noun_class = {n: rng.randrange(2) for n in NOUNS}
        self.adj = {a: self._new(2, 3) for a in ADJECTIVES}
        self.adv = {a: self._new(2, 3) for a in ADVERBS}
        self.prep = {p: self._new(1, 2) for p in PREPOSITIONS}
        verbs = [b for b, _ in TRANSITIVE] + [b for b, _ in INTRANSITIVE]
        self.verb: dict[str, list[str]] = {}
        for v in verbs:
            if v in self.verb:
                continue
            # About one verb in six translates as a light-verb construction (two target words).
            if rng.random() < 1 / 6:
                self.verb[v] = [self._new(2, 2), rng.choice(["kon", "dar", "lem"])]
            else:
                self.verb[v] = [self._new(2, 3)]
        # Determiner by (source determiner, target noun class, plural).
        self.det = {
            ("the", 0): "lo", ("the", 1): "ka", ("a", 0): "un", ("a", 1): "na",
            ("this", 0): "sei", ("this", 1): "sai", ("every", 0): "ve", ("every", 1): "vo",
        }

    def _new(self, lo: int, hi: int) -> str:
        while True:
            n = self.rng.randint(lo, hi)
            w = "".join(
                self.rng.choice(self.ONSETS) + self.rng.choice(self.VOWELS) for _ in range(n)
            ) + self.rng.choice(self.CODAS)
            if w not in self.used:
                self.used.add(w)
                return w


class Grammar:
    def __init__(self, lex: Lexicon, rng: random.Random):
        self.lex, self.rng = lex, rng

    def noun_phrase(self, depth: int = 0) -> tuple[Phrase, bool]:
        """A noun phrase and whether it is plural."""
        r, lex = self.rng, self.lex
        noun = r.choice(NOUNS)
        plural = r.random() < 0.3
        det = r.choice(["the", "the", "this"] if plural else ["the", "the", "a", "this", "every"])
        adjs = r.sample(ADJECTIVES, r.choices([0, 1, 2, 3], weights=[45, 35, 15, 5])[0])
        src_det = "these" if (plural and det == "this") else det
        tgt_noun = [lex.noun[noun]] + (["ri"] if plural else [])
        # Source: det adj* noun.  Target: det noun [ri] adj* (adjectives follow the noun).
        np = Phrase(
            [src_det] + adjs + [plural_of(noun) if plural else noun],
            [lex.det[(det, lex.noun_class[noun])]] + tgt_noun + [lex.adj[a] for a in adjs],
            [(0, 0)]
            + [(1 + len(adjs), 1 + k) for k in range(len(tgt_noun))]
            + [(1 + a, 1 + len(tgt_noun) + a) for a in range(len(adjs))],
        )
        if depth == 0 and r.random() < 0.15:
            # A PP modifying a noun stays after the noun on both sides.
            np = np + self.prep_phrase(depth + 1)
        return np, plural

    def prep_phrase(self, depth: int = 0) -> Phrase:
        p = self.rng.choice(PREPOSITIONS)
        np, _ = self.noun_phrase(depth + 1)
        # Source "prep NP" -> target "NP postp".
        return Phrase(
            [p] + np.src,
            np.tgt + [self.lex.prep[p]],
            [(0, len(np.tgt))] + [(i + 1, j) for i, j in np.links],
        )

    def verb_group(self, transitive: bool, subj_plural: bool) -> Phrase:
        """The source verb group (agreeing with the subject) and its fused target verb."""
        r, lex = self.rng, self.lex
        base, third = r.choice(TRANSITIVE if transitive else INTRANSITIVE)
        tgt = list(lex.verb[base])
        tense = r.choices(["present", "future", "negated"], weights=[60, 20, 20])[0]
        if tense == "present":
            src = [base if subj_plural else third]
        elif tense == "future":
            src, tgt[-1] = ["will", base], tgt[-1] + "ta"
        else:
            src, tgt[-1] = ["do" if subj_plural else "does", "not", base], tgt[-1] + "mu"
        return word(src, tgt)

    def clause(self) -> Phrase:
        r = self.rng
        subj, subj_plural = self.noun_phrase()
        transitive = r.random() < 0.65
        verb = self.verb_group(transitive, subj_plural)
        obj = self.noun_phrase()[0] if transitive else Phrase()
        pps = [self.prep_phrase() for _ in range(r.choices([0, 1, 2], weights=[55, 35, 10])[0])]
        adverb = word([a := r.choice(ADVERBS)], [self.lex.adv[a]]) if r.random() < 0.2 else Phrase()
        # Source: S V O PP* ADV.  Target: S O PP* ADV V (verb-final).
        parts_src = [subj, verb, obj, *pps, adverb]
        order_tgt = [0, 2, *range(3, 3 + len(pps)), 3 + len(pps), 1]
        return reorder(parts_src, order_tgt)

    def sentence(self) -> Phrase:
        s = self.clause()
        while self.rng.random() < 0.25:
            conj = self.rng.choice(["and", "but", "because"])
            tgt_conj = {"and": "e", "but": "ma", "because": "poi"}[conj]
            s = s.join(word([conj], [tgt_conj]), self.clause())
        return s


def reorder(parts: list[Phrase], order: list[int]) -> Phrase:
    """Concatenate ``parts`` in source order on the source side and in ``order`` on the target side."""
    src: list[str] = []
    src_offset = []
    for p in parts:
        src_offset.append(len(src))
        src += p.src
    tgt: list[str] = []
    links: list[tuple[int, int]] = []
    for k in order:
        p = parts[k]
        links += [(i + src_offset[k], j + len(tgt)) for i, j in p.links]
        tgt += p.tgt
    return Phrase(src, tgt, links)


def generate_pairs(n: int, seed: int, min_len: int = 3, max_len: int = 30) -> list[Phrase]:
    """``n`` distinct sentence pairs with ``min_len <= len(source) <= max_len`` words."""
    lex = Lexicon(random.Random(seed))
    grammar = Grammar(lex, random.Random(seed + 1))
    seen: set[str] = set()
    out: list[Phrase] = []
    while len(out) < n:
        p = grammar.sentence()
        key = " ".join(p.src)
        if min_len <= len(p.src) <= max_len and key not in seen:
            seen.add(key)
            out.append(p)
    return out


def ensure_synthetic(
    data_dir: str | Path,
    num_train: int = 24000,
    num_valid: int = 1000,
    num_test: int = 1000,
    seed: int = 7,
) -> Path:
    """Generate the corpus into ``data_dir`` unless an identical one is already there.

    Writes ``{train,valid,test}.{en,syn}``, ``{valid,test}.align`` (Pharaoh) and ``meta.json``.
    Each file is written atomically and ``meta.json`` last, so an interrupted generation is
    regenerated on the next call rather than trusted.
    """
    data_dir = Path(data_dir)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_valid": num_valid,
        "num_test": num_test,
        "seed": seed,
    }
    meta_path = data_dir / "meta.json"
    if meta_path.exists():
        try:
            if json.loads(meta_path.read_text()) == meta:
                return data_dir
        except json.JSONDecodeError:
            pass
    log.info("Generating the synthetic corpus into %s", data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    pairs = generate_pairs(num_train + num_valid + num_test, seed)
    splits = {
        "train": pairs[:num_train],
        "valid": pairs[num_train : num_train + num_valid],
        "test": pairs[num_train + num_valid :],
    }
    for name, items in splits.items():
        atomic_write_text(data_dir / f"{name}.{SRC_LANG}", "".join(" ".join(p.src) + "\n" for p in items))
        atomic_write_text(data_dir / f"{name}.{TGT_LANG}", "".join(" ".join(p.tgt) + "\n" for p in items))
        if name != "train":
            atomic_write_text(data_dir / f"{name}.align", "".join(p.pharaoh() + "\n" for p in items))
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return data_dir
