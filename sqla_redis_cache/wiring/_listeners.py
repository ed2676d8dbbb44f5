"""Installing a group of event listeners, idempotently, and removing them again.

The hook classes (``SessionHooks``, ``ReadHooks``, ``WriteHooks``, ``TransactionHooks``) each
name their events in ``EVENTS`` and implement one method per event; this base adds and removes
exactly those listeners, so an ``attach()`` repeated on the same target never doubles them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import event


class Listeners:
    EVENTS: ClassVar[tuple[str, ...]] = ()

    def install(self, target: Any) -> None:
        for name in self.EVENTS:
            listener = getattr(self, name)
            if not event.contains(target, name, listener):
                event.listen(target, name, listener)

    def uninstall(self, target: Any) -> None:
        for name in self.EVENTS:
            listener = getattr(self, name)
            if event.contains(target, name, listener):
                event.remove(target, name, listener)
