"""The embedded default store: one SQLite database plus a directory of large bodies.

The database runs in WAL mode with ``synchronous=FULL``: a transaction is
durable once ``COMMIT`` returns.  Each part of the store is a module of its
own:

- ``_store``: ``SQLiteStore``, the public face, which holds the parts
  together and decides which writer stores a new message (``_route``): the
  commit service, for a store connected to one, else its own writer;
- ``_open``: the files, the schema and its upgrades, the open lock, and the
  sweep of body files no row names;
- ``_integrity``: the check of the file a server makes before it opens the
  store (``PRAGMA quick_check``), which refuses a damaged database;
- ``_schema``: the tables, and the mapping between rows and the model
  (compiled with mypyc, as a new message's row is made there);
- ``_records``: ``NewMessageRecord``, a new message as a transaction takes
  it and as it crosses to the commit service, with its wire encoding
  (compiled too);
- ``_transactions``: ``WriteConnection``, the write transactions (group
  commit of a batch, the change log, the search index's catching up), and
  ``WriteTurns`` between writers;
- ``_writer``: the store's own writer thread, which batches what is
  submitted into those transactions: every change, and the new mail of a
  store that sends none to a commit service (a command's, the service's own);
- ``_commit_service``: the commit service, the one writer of new mail for
  every SMTP process of a node (``mailgate serve``), and the client and link
  a store reaches it by;
- ``_reads``: the pool of read connections and the queries;
- ``_search``: search (``query.Query`` as SQL over a trigram index) and tags;
- ``_bodies``: adopting spool files as body files, reading and removing them;
- ``_events`` and ``_follow``: subscribers, and the changes other stores
  commit, read from the ``changes`` log;
- ``_connection``: how every connection is made.

Several stores, in one process or many, may share the database: writers take
turns on a lock file, and each store's subscribers see every store's
changes.
"""

from __future__ import annotations

from mailgate.stores.sqlite._integrity import INTEGRITY_CHECK_SECONDS, Integrity, check_integrity
from mailgate.stores.sqlite._store import SQLiteStore
from mailgate.stores.sqlite._transactions import WriterStats

__all__ = ["INTEGRITY_CHECK_SECONDS", "Integrity", "SQLiteStore", "WriterStats", "check_integrity"]
