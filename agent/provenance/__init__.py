"""Traceability: follow a tagged item (food SGTIN, garment, blood bag) through the fleet's chains.

- ``gather.TraceSession``: opens a data dir, finds every reading about a tag (tag indexes, and
  private readings opened with a key), verifies each against a verified chain (``chains``).
- ``analysis.analyse``: stays, gaps, excursions, washes and the verdict (rules in ``rules``).
- ``render`` (text, JSON), ``epcis`` (GS1 EPCIS 2.0 JSON-LD), ``bundles`` (offline proof
  bundles, both ways), ``opening`` (owner keys and grants).

docs/PROVENANCE.md is the user's guide.
"""
