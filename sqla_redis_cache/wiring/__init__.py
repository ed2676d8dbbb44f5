"""The SQLAlchemy wiring: where the cache meets sessions, engines and statements.

Everything that knows SQLAlchemy lives here (the storage and I/O layers below never import it).
Modules, along the data path:

- ``_attach``: :class:`~._attach.Wiring` builds the hooks of one cache and installs them on what
  ``attach()`` gets (``_targets``: sessionmakers, sessions, engines and their asyncio twins);
  ``_listeners``: installing a hook class's listeners idempotently;
- ``_options``: the ``cached()`` option and the directive it carries to the cursor;
- ``_session``: session events (the option, the connections of a transaction, after_commit);
- ``_reads``: ``do_execute``, where cached reads are served (``_cursor``: a DBAPI cursor over
  cached rows); ``_analysis``: the tables a compiled statement reads or writes;
  ``_identity``: which database a connection reaches; ``_runtime_settings``: session settings a
  connection changes at run time;
- ``_writes``: ``after_cursor_execute``, where writes are recorded (``_sqlwrites``: textual SQL;
  ``_fkgraph``: what the database changes along, from its catalog; ``_write_rules``: declared
  consequences);
- ``_transaction``: the per-connection transaction state those hooks share;
- ``_commit``: the commit path (written tables and entities -> invalidation plan -> one
  pipeline) and the connection events that feed it;
- ``_entities``, ``_entity_get``, ``_write_through``: the entity cache and its write-through;
- ``_compat``: every SQLAlchemy internal the wiring reads, checked at attach time.
"""
