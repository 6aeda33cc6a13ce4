"""Visual concepts: the WordNet nouns of ImageNet-21k -> ``kb`` rows, one sense per word.

Lower-case common nouns of alt-texts ("a dog on a table") link only to these rows. The
data is timm's ``data/_info`` folder (found with ``importlib.util.find_spec``; timm is
never imported): ``imagenet21k_goog_synsets.txt`` (the 21,843 ImageNet-21k synsets of
Google's release, the class list of timm's in21k models; ``imagenet22k_synsets.txt`` is
the same list less "picture" and "bleacher") plus ``imagenet_synsets.txt`` (ImageNet-1k),
which adds the one 1k class missing from 21k, "teddy bear" (a COCO category), and
``imagenet_synset_to_lemma.txt`` / ``imagenet_synset_to_definition.txt``, which cover
exactly these 21,844 synsets.

Row: entity_id = ``wordnet:`` + synset id, name = the first lemma the synset keeps,
aliases = its other kept lemmas, description = the gloss, kind = ``concept``.

Which lemmas are concept words (measured on these files: 40,744 lemmas, 21,844 synsets):
- only lower-case ones. 8,364 lemmas start with a capital: Latin taxa ("Canis
  familiaris"), breeds and nationalities ("Persian cat", "Hausa"), people ("Popper"),
  brands ("Caterpillar"). They are names, found by the other sources; kept here they would
  also claim common words after normalization ("Caterpillar" -> "caterpillar"). 1,806
  synsets have no lower-case lemma and give no row.
- not in :data:`STOP_WORDS` (271 words): of the 607 most frequent concept
  words (wordfreq Zipf >= 4.5) those were dropped by hand whose everyday use is not a
  noun ("back", "top", "white", "open"), that are first names or countries in lower case
  ("john" is a toilet, "china" porcelain), or whose only ImageNet-21k senses are not what
  a caption means ("hand" is a clock hand or a crew member, "sink" a cesspool or a
  sinkhole, "board" is "food or meals in general"). The caption words "group", "couple", "bunch", "view" and "item"
  are lemmas of no ImageNet-21k synset, so they are no concepts anyway.
- not a colour or "young" before another concept word (:data:`DESCRIBING_WORDS`): in a
  caption "a white sheep" is a sheep and "a young man" a man, not Dall sheep or a "young
  buck". These lemmas go, and the caption's head noun links.

One sense per word: 2,695 normalized concept words (of 28,403) are lemmas of two or more
synsets; each goes to the synset ranked first by
1. the lemma is the synset's head (first) lemma: WordNet lists a synset's most usual word
   first; this decides 877 of them ("dog" -> domestic dog, not andiron; "cat" -> the
   feline, not the big cat or "an informal term for a youth or man");
2. the synset's lexicographer class: things (animal, artifact, food, plant, body, natural
   object, substance) before people before the rest (acts, attributes, shapes, states,
   events, locations, ...). WordNet 3.0 synset offsets follow these classes, so
   :data:`THING_SPANS` and :data:`PERSON_SPAN` read them off the id ("ball" -> the ball,
   not "the game of baseball"; "orange" -> the fruit, not the colour; "sheep" -> the
   animal, not "a timid defenseless simpleton"); this decides 197 more;
3. the lower synset id (the other 1,621): inside a class it keeps the lexicographer's
   order, in which the general sense usually comes first. It is the weakest step, so the
   words below were checked by hand ("table" -> n04379243 the furniture, before
   n04379964 "furniture with tableware laid out"; "car" -> automobile before railcar,
   "horse" -> the animal before the gymnastic horse).
:data:`SENSES` overrides the rule for 21 frequent caption words where it picks a sense
that photos almost never mean ("field" -> oil-field region, "tie" -> tie beam, "plane" ->
carpenter's plane, "mouse" -> the rodent where desk photos mean the computer mouse);
:data:`EXTRA_WORDS` gives "toilet" to the fixture (flush toilet), whose synset lacks the
word. Only things and people are concepts: synsets of the other classes (acts, events,
attributes, phenomena: "riding", "a baseball game", "cross-country skiing", "snow") keep
no word, since a caption's "riding" is no object in the photo.

Words of the brief, checked (-> synset: gloss):
dog n02084071 domestic dog; cat n02121620 feline mammal; man n10289039 "the generic use of
the word to refer to any human being"; woman n10787470 adult female person; person
n00007846 human being; table n04379243 furniture with a flat top; bed n02818832 furniture
to sleep on; plate n07579787 "a main course served on a plate" (override; the dish itself
is not in ImageNet-21k, this is the ImageNet-1k class "plate"); field n09393605 "extensive
tract of level open land" (override); pizza n07873807; horse n02374451; bus n02924116;
train n04468005 railway train; car n02958343 automobile; kite: no concept (stop word: the
toy is not in ImageNet-21k, only the hawk); umbrella n04507155; crane n03126707 the
machine (override); bat n02139199 the animal; mouse n03793489 the computer mouse (override);
apple n07739125 the fruit; jaguar n02128925 the feline; glass n03438257 drinking glass;
tie n03815615 necktie (override); bow n02879718 the weapon (override, ImageNet-1k class;
the rule gave the violin bow); bank n09213565 "sloping land beside a body of water"
(override; the rule gave "a long ridge or pile"); court n03120198 courtyard; player
n10439851 "a person who participates in a game"; shirt n04197391; clock n03046257; toilet
n04446276 "a room or building equipped with toilets" (the bowl is n04447028 "toilet
bowl"); laptop n03642806; rocket n04099429 the vehicle (override; the rule gave the rocket
engine); coffee n07929519 the beverage; cup n03147509 the drinking container (not the 1k
class n07930864, a punch). No concept: group, couple, bunch, view, item (no such lemma),
board, sink (stop words).

Read against 100 hand-labelled coco-mini captions (``benchmarks/gold/coco_mini_entities.jsonl``,
the development set; ``coco_mini_entities_test.jsonl`` is kept for the measurement) the
first rule linked "cake" to fish cake, "meat" to nutmeat, "posters" to a post horse,
"kite" to the hawk, "a piece" to a firearm, "stove" to "any heating apparatus" and "a
crane" in a street to the bird; "picture", "image" and "area" are abstract in captions.
Those words joined the stop list (cake, meat, poster, kite, piece, picture, image, area)
or :data:`SENSES` (stove, crane). A second reading of both files' wrong links (so neither
file is held out for these words any more) added the words whose only ImageNet-21k sense
is not what a caption means ("trick": a prostitute's customer, "game": animals hunted,
"pile": a column driven into the ground, "wind": a wind instrument, "batter": the dough,
"colors": an emblem, "cityscape": a painting) and those the gold files' labelling rule
calls non-visual ("pitch", "dinner").

Result: 17,856 rows; the other synsets give none (1,806 have no lower-case lemma, the rest
lost every word to another sense or the stop list). Loading takes about 1.5 s.

Popularity: 10 ** (Zipf - 3) of the name, i.e. wordfreq's frequency per million words,
floored at :data:`MIN_POPULARITY` (Zipf 1, the lowest frequency wordfreq reports; it says
0 for words it does not know, and a prior must stay positive). The prior of an alias then
follows how often people use the word: "dog" (126) outweighs "chiropteran" (0.01).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa

import schemas
from i2e_engine.kb.alias_index import normalize_alias

SOURCE = "concepts"
KIND = "concept"
PACKAGE = "timm"
SYNSET_FILES = ("imagenet21k_goog_synsets.txt", "imagenet_synsets.txt")
LEMMA_FILE = "imagenet_synset_to_lemma.txt"
GLOSS_FILE = "imagenet_synset_to_definition.txt"
MIN_POPULARITY = 0.01

# WordNet 3.0 noun offsets follow the lexicographer files; these spans hold the files of
# concrete things (Tops, animal + artifact, body, food, object, plant, substance) and of
# people, as checked on the glosses at each boundary of the ImageNet ids.
THING_SPANS = (("n00000000", "n00030000"), ("n01300000", "n04620000"), ("n05200000", "n05600000"),
               ("n07550000", "n07940000"), ("n09180000", "n09500000"), ("n11530000", "n13240000"),
               ("n14500000", "n15100000"))
PERSON_SPAN = ("n09500000", "n11400000")

STOP_WORDS = frozenset("""
    white black red blue green yellow pink grey gray purple tan silver beige
    have can well being still down best help must keep set top stop call side line open
    general means course young post local mind level control bit class watch special saw
    stay short third form major works front study lead running fight site shot miss date
    record hold press round step match felt fall drive range forward style chief release
    entire pick cover safe figure die daily crazy ways goal base standard limited western
    double beat anti individual cross link drop contact extra subject heavy nobody rule
    annual stock master independent active wear senior sweet grand overall spot primary
    block pop catch complex royal ride prior fell separate scale push pull arms spread rise
    ex draw remains grade till negative cast setting dear treat roll raise fly file lovely
    edge dry core closer upper transfer quarter flat mix joint split measure equal zero
    minor upset spoke medium familiar drunk chosen reserve switch row cycle return private
    center centre source stand mine network movement justice construction collection
    protection channel memory foundation authority engineering housing host birth
    connection balance beauty web failure emergency enemy user ray launch express feed sub
    pack escape ministry threat world place system case point support power party story
    action security defense brand sport hand body wave fork sink board life family heart
    face ground ring bill square port bay spring background john jack mike bob ben don tom
    martin smith christ trump china japan shit ass bitch
    cake meat poster kite piece picture image area
    trick pitch dinner cityscape colors colours batter game pile wind
""".split())

# A colour or "young" before a concept word describes it: "a white sheep" is a sheep (not
# Dall sheep, "white sheep"), "a young man" a man (not "young buck"). Such lemmas are no
# concept words, so the caption's head noun links instead.
DESCRIBING_WORDS = frozenset("white black red blue green yellow pink grey gray purple tan silver beige "
                             "brown orange young".split())

# word -> synset, where the rule's sense is one that photos almost never mean
SENSES = {
    "field": "n09393605",    # plain, not "a region under which something valuable is found"
    "plate": "n07579787",    # a main course on a plate, not a metal sheathing
    "tie": "n03815615",      # necktie, not a tie beam
    "rocket": "n04099429",   # the vehicle, not the engine
    "bow": "n02879718",      # the weapon, not the violin bow
    "head": "n05538625",     # the body part, not "a single domestic animal"
    "plane": "n02691156",    # airplane, not the carpenter's plane
    "phone": "n04401088",    # telephone, not earphone
    "couch": "n04256520",    # sofa, not the psychoanalyst's couch
    "store": "n04202417",    # shop, not computer memory
    "coast": "n09428293",    # seashore, not a slope for sleds
    "meal": "n07573696",     # repast, not coarsely ground grain
    "tea": "n07933274",      # the beverage, not afternoon tea
    "screen": "n04152593",   # display screen, not a netting
    "monitor": "n03782190",  # display, not the lizard
    "kid": "n09917593",      # child, not a young goat
    "guy": "n10153414",      # a man, not a guy wire
    "bank": "n09213565",     # the slope beside water, not "a long ridge or pile"
    "stove": "n04330340",    # the kitchen stove, not "any heating apparatus"
    "crane": "n03126707",    # the machine of street photos, not the bird
    "mouse": "n03793489",    # the computer mouse of desk photos (COCO's category), not the rodent
}

# Everyday words for a thing whose synset does not list them: the fixture a photo shows
# is "flush toilet, lavatory"; the synset with the lemma "toilet" is the room.
EXTRA_WORDS = {"toilet": "n03371875"}


def data_dir() -> Path:
    """timm's ``data/_info`` folder, found without importing timm."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed (pip install timm)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "_info"
        if (path / LEMMA_FILE).exists():
            return path
    raise FileNotFoundError(f"data/_info/{LEMMA_FILE} not found in {list(spec.submodule_search_locations)}")


def _read_tsv(path: Path) -> dict[str, str]:
    pairs = (line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line)
    return {synset.strip(): text.strip() for synset, text in pairs}


def read_synsets(folder: Optional[str | Path] = None) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """(synset ids in id order, synset -> lemmas as written, synset -> gloss)."""
    folder = Path(folder or data_dir())
    ids = sorted({line.strip() for name in SYNSET_FILES
                  for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()})
    lemmas = {synset: [lemma.strip() for lemma in text.split(",") if lemma.strip()]
              for synset, text in _read_tsv(folder / LEMMA_FILE).items()}
    return ids, lemmas, _read_tsv(folder / GLOSS_FILE)


def sense_class(synset: str) -> int:
    """0 for concrete things, 1 for people, 2 for the rest (read off the WordNet offset)."""
    if any(low <= synset < high for low, high in THING_SPANS):
        return 0
    return 1 if PERSON_SPAN[0] <= synset < PERSON_SPAN[1] else 2


def is_concept_word(lemma: str) -> bool:
    """A lower-case lemma that is not a stop word (module docstring) nor a possessive
    ("men's" for the men's room: alias keys drop the "'s", so it would claim "men")."""
    return (bool(lemma) and not lemma[0].isupper() and "'s" not in lemma
            and normalize_alias(lemma) not in STOP_WORDS)


def described_concept(key: str, concept_keys: frozenset[str] | set[str]) -> bool:
    """A colour or "young" before a concept word (``DESCRIBING_WORDS``): "white sheep",
    "young man". The phrase is the head's description in a caption, not a concept."""
    first, _, rest = key.partition(" ")
    return first in DESCRIBING_WORDS and rest in concept_keys


def word_owners(ids: list[str], lemmas: dict[str, list[str]]) -> dict[str, str]:
    """normalized concept word -> the one synset that keeps it (rule in the module docstring)."""
    best: dict[str, tuple[bool, int, str]] = {}
    for synset in ids:
        for position, lemma in enumerate(lemmas.get(synset, [])):
            key = normalize_alias(lemma)
            if not key or not is_concept_word(lemma):
                continue
            if sense_class(synset) > 1:
                continue          # acts, events, attributes: no picture ("riding", "a baseball game")
            rank = (position > 0, sense_class(synset), synset)
            if key not in best or rank < best[key]:
                best[key] = rank
    owners = {key: rank[-1] for key, rank in best.items() if not described_concept(key, best.keys())}
    for key, synset in SENSES.items():
        if key not in owners or key not in {normalize_alias(lemma) for lemma in lemmas.get(synset, [])}:
            raise ValueError(f"sense override {key!r} -> {synset} does not match the data")
        owners[key] = synset
    owners.update(EXTRA_WORDS)
    return owners


def popularity(name: str) -> float:
    """wordfreq's frequency per million words of ``name``, at least MIN_POPULARITY."""
    from wordfreq import zipf_frequency

    return max(MIN_POPULARITY, 10 ** (zipf_frequency(name, "en") - 3))


def iter_concepts(folder: Optional[str | Path] = None, limit: Optional[int] = None) -> Iterator[dict]:
    """Yield ``kb`` rows in synset-id order, at most ``limit``."""
    ids, lemmas, glosses = read_synsets(folder)
    owners = word_owners(ids, lemmas)
    count = 0
    for synset in ids:
        kept, keys = [], set()
        extra = [word for word, owner in EXTRA_WORDS.items() if owner == synset]
        for lemma in lemmas.get(synset, []) + extra:
            key = normalize_alias(lemma)
            if owners.get(key) == synset and key not in keys and is_concept_word(lemma):
                keys.add(key)
                kept.append(lemma)
        if not kept:
            continue
        if limit is not None and count >= limit:
            return
        count += 1
        yield {
            "entity_id": "wordnet:" + synset,
            "name": kept[0],
            "description": glosses.get(synset, ""),
            "aliases": kept[1:],
            "source": SOURCE,
            "popularity": popularity(kept[0]),
            "qid": None,
            "wiki_title": None,
            "kind": KIND,
        }


def concept_table(limit: Optional[int] = None, folder: Optional[str | Path] = None) -> pa.Table:
    """The visual concepts as a ``kb`` table (``limit`` caps the rows, for smoke runs)."""
    return schemas.from_records(iter_concepts(folder, limit), "kb")
