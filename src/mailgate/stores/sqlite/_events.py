"""The store's subscribers, and the events they are owed: its own and those of other stores.

Each subscriber is a ``Subscription``: a queue on the event loop it
subscribed from.  Events come from two sides.  The store's own changes come
from its writer thread right after each commit, or from its commit-service
link when an answer arrives (``publish``).  Other stores' changes, in this
process or another, come from a ``_follow.Follower`` thread reading the
``changes`` log (``publish_followed``); it runs only while the store has
subscribers, and is created on the subscribing thread so that it starts
from the newest change at that moment.

A follower told to stop may still be reading: what it reads then is
dropped, as its subscribers are gone and what the present ones are owed is
the present follower's to read.  Closing ends every subscription with the
end of its iteration.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from mailgate.model import StoreEvent
from mailgate.ports import StoreError
from mailgate.stores._subscription import MAX_SUBSCRIBER_BACKLOG, Subscription
from mailgate.stores.sqlite._follow import Follower

__all__ = ["MAX_SUBSCRIBER_BACKLOG", "Subscription", "Subscriptions"]


class Subscriptions:
    """Every subscriber of one store, and the follower that runs while there are any."""

    def __init__(self, path: Path, origin: str) -> None:
        self._path = path
        self._origin = origin
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()  # also guards the followers
        self._follower: Follower | None = None
        self._stopped_followers: list[Follower] = []  # told to stop; maybe still ending
        self._closed = False

    def subscribe(self) -> Subscription:
        """A new subscription on the running loop, the follower started if need be.

        Raises ``StoreError`` when closed, or when the database cannot be read.
        """
        subscription = Subscription(self)
        with self._lock:
            if self._closed:
                raise StoreError(f"message store {self._path} is closed")
            if self._follower is None:
                # Opens a connection and reads one row, on this thread, so that the
                # follower starts from now and not from whenever its thread first runs.
                try:
                    self._follower = Follower(self._path, self._origin, self._publish_followed)
                except sqlite3.Error as error:
                    raise StoreError(f"could not follow the message store: {error}") from error
            self._subscriptions.add(subscription)
        return subscription

    def remove(self, subscription: Subscription) -> None:
        """Forget a subscription; the last one gone stops the follower."""
        with self._lock:
            self._subscriptions.discard(subscription)
            follower = self._follower
            if self._subscriptions or follower is None:
                return
            self._follower = None
            self._stopped_followers = [f for f in self._stopped_followers if f.is_alive()]
            self._stopped_followers.append(follower)
        follower.stop()

    def publish(self, events: Sequence[StoreEvent | None]) -> None:
        """The store's own events, for every subscriber; from any thread."""
        with self._lock:
            subscriptions = list(self._subscriptions)
        _push(subscriptions, events)

    def _publish_followed(self, follower: Follower, events: Sequence[StoreEvent]) -> None:
        """Called from a follower's thread with the events other stores committed."""
        with self._lock:
            if follower is not self._follower:
                return
            subscriptions = list(self._subscriptions)
        _push(subscriptions, events)

    def stop_following(self) -> list[Follower]:
        """Refuse new subscribers, tell every follower to stop, and return them, to join."""
        with self._lock:
            self._closed = True
            followers = [*self._stopped_followers]
            if self._follower is not None:
                followers.append(self._follower)
            self._follower, self._stopped_followers = None, []
        for follower in followers:
            follower.stop()
        return followers

    def end(self) -> None:
        """End every subscription (after ``stop_following``)."""
        self.publish([None])


def _push(subscriptions: Sequence[Subscription], events: Sequence[StoreEvent | None]) -> None:
    for subscription in subscriptions:
        with contextlib.suppress(RuntimeError):  # its event loop is closed
            subscription.loop.call_soon_threadsafe(subscription.push, events)
