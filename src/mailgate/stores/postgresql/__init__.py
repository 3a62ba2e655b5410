"""The store for several mailgate nodes: one PostgreSQL database, shared.

Every node opens the same database (``postgresql://user@host:port/db``); the
schema is mailgate's own, created and upgraded when a store opens.  Each part
is a module of its own:

- ``_store``: ``PostgreSQLStore``, the public face, holding the parts together;
- ``_schema``: the tables, their versions and upgrades, the search index;
- ``_records``: the mapping between the model and the rows;
- ``_connection``: the URL, the settings, the pool, errors as one line;
- ``_writer``: the one writer task of a store, which commits what is
  submitted meanwhile in one transaction (group commit), new mail with its
  content, queue rows and events;
- ``_changes``: deleting and marking read, as the writer's work;
- ``_reads`` and ``_search``: reads, search (``query.Query`` as SQL) and tags;
- ``_events`` and ``_follow``: subscribers, the event log every change is
  written to, and the task that reads other stores' events from it;
- ``_queue``: the outbound queue, shared by the queue runners of every node.

Stores on any number of nodes may share the database: each store's
subscribers hear every store's changes, each once.
"""

from __future__ import annotations

from mailgate.stores.postgresql._connection import PostgreSQLSettings
from mailgate.stores.postgresql._schema import SCHEMA_VERSION
from mailgate.stores.postgresql._store import PostgreSQLStore
from mailgate.stores.postgresql._writer import WriterStats

__all__ = ["SCHEMA_VERSION", "PostgreSQLSettings", "PostgreSQLStore", "WriterStats"]
