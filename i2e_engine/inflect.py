"""English plural forms, just enough for alias matching: alt-texts say "coins" and
"galaxies" where the KB says "Coin" and "Galaxy". Rules, not a dictionary: a wrong
plural only adds a phrase that never matches, and singular candidates are tried only
when the mention itself has no candidate."""
from __future__ import annotations

_SIBILANT_ENDINGS = ("s", "x", "z", "ch", "sh")
_VOWELS = "aeiou"


def plural(phrase: str) -> str:
    """Plural of a phrase's last word: "coin" -> "coins", "galaxy" -> "galaxies",
    "space shuttle" -> "space shuttles", "box" -> "boxes"."""
    head, _, last = phrase.rpartition(" ")
    lower = last.lower()
    if len(lower) > 1 and lower.endswith("y") and lower[-2] not in _VOWELS:
        last = last[:-1] + "ies"
    elif lower.endswith(_SIBILANT_ENDINGS):
        last = last + "es"
    else:
        last = last + "s"
    return f"{head} {last}" if head else last


def singulars(phrase: str) -> list[str]:
    """Candidate singulars of a phrase's last word, most specific rule first."""
    head, _, last = phrase.rpartition(" ")
    lower = last.lower()
    forms = []
    if lower.endswith("ies") and len(lower) > 4:
        forms.append(last[:-3] + "y")
    if lower.endswith("es") and last[:-2].lower().endswith(_SIBILANT_ENDINGS):
        forms.append(last[:-2])
    if lower.endswith("s") and not lower.endswith("ss") and len(lower) > 3:
        forms.append(last[:-1])
    return [f"{head} {form}" if head else form for form in forms]
