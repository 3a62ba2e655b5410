"""The bodies directory: the content of large messages, one file each.

A message whose content rolled over to a spool file while it was received, or
whose content held in memory is over ``_store.MAX_INLINE_CONTENT_OCTETS``,
keeps it in ``<database>-bodies/<id>.eml``; smaller ones are stored inline in
the database.  The store adopts the spool file (``adopt``): syncs it and moves
it in, or, from another file system or from memory, writes it in under a
``.partial`` name first.  The directory entry is synced once per transaction, before the COMMIT
whose rows name the files (``sync``, by whoever commits); a file is unlinked
only after the transaction deleting its row committed.  So a crash leaves at
worst a file no row names, which the first store to open removes
(``remove_unnamed``, see ``_open``).

A body file is read a part at a time (``stream``), in a worker thread: a
download or a relay of a 50 MB message holds ``READ_OCTETS`` of it at once.
A file unlinked while it is read is still read whole (POSIX keeps it while it
is open); one unlinked before it was opened was deleted: ``StoreError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path

from mailgate.model import MessageId
from mailgate.ports import NewMessage, StoreError

__all__ = ["BODY_SUFFIX", "PARTIAL_SUFFIX", "READ_OCTETS", "BodyFiles", "sync_directory"]

BODY_SUFFIX = ".eml"
PARTIAL_SUFFIX = ".partial"
READ_OCTETS = 256 * 1024
"""What one read of a body file takes while it is streamed."""


def sync_directory(path: Path) -> None:
    """fsync a directory, making the entries renamed into it durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BodyFiles:
    """The bodies directory of one database."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def name_for(message_id: MessageId) -> str:
        """The file name a message's body takes."""
        return message_id + BODY_SUFFIX

    def adopt(self, message: NewMessage, name: str) -> None:
        """Make the body durable as ``name`` in the directory (its entry not yet synced).

        Raises ``OSError`` when it cannot; then no file of that name is left.
        """
        target = self.directory / name
        source = message.path
        if source is not None:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.rename(source, target)
                return
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
        # Another file system, or no file at all: copy, sync, then move into place.
        partial = self.directory / (name + PARTIAL_SUFFIX)
        try:
            with message.open() as reader, open(partial, "xb") as writer:
                shutil.copyfileobj(reader, writer)
                writer.flush()
                os.fsync(writer.fileno())
            os.rename(partial, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise

    def read(self, name: str) -> bytes | None:
        """The content of body file ``name``, or ``None`` when it is gone (deleted since)."""
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        """Whether body file ``name`` is there (not deleted since its row was read)."""
        return (self.directory / name).is_file()

    async def stream(self, name: str, message_id: MessageId) -> AsyncGenerator[bytes, None]:
        """The content of body file ``name`` (``message_id``'s), ``READ_OCTETS`` at a time.

        Opened at the first iteration, closed at the end or on ``aclose``.  Raises
        ``StoreError`` when it is gone (deleted since) or cannot be read.
        """
        try:
            reader = await asyncio.to_thread(open, self.directory / name, "rb")
        except FileNotFoundError:
            raise StoreError(f"message {message_id} was deleted while it was read") from None
        except OSError as error:
            raise StoreError(f"could not read the body of {message_id}: {error}") from error
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(reader.read, READ_OCTETS)
                except OSError as error:
                    raise StoreError(f"could not read the body of {message_id}: {error}") from error
                if not chunk:
                    return
                yield chunk
        finally:
            reader.close()

    def sync(self) -> None:
        """Make the files moved in so far durable: before the COMMIT whose rows name them."""
        sync_directory(self.directory)

    def unlink(self, names: Iterable[str]) -> None:
        """Remove these files, those already gone included."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)

    def remove_unnamed(self, named: set[str]) -> None:
        """Remove every file but those ``named`` (by rows): only while no other store is open."""
        for entry in os.scandir(self.directory):
            if entry.name not in named:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
