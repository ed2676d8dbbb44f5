"""Features over the storage layer: what the facade offers beyond cached queries.

None of them knows SQLAlchemy (checked by an import-linter contract):

- ``_generic``: the key/value API (``set``, ``get``, ``get_or_set``, ``delete``,
  ``delete_pattern``) and ``read_through``, which the ASGI middleware uses;
- ``_memoize``: ``QueryCache.memoize`` for sync and ``async def`` functions;
- ``_warmup``: warm-up callables;
- ``_dogpile``: the dogpile.cache backend and regions (``QueryCache.region``);
- ``_shared_stats``: statistics shared by every process of a namespace;
- ``_admin``: operator helpers (reachability, census, deleting by kind) for the CLI and the
  status API.
"""
