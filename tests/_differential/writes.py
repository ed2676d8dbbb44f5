"""Write paths: each makes one change through one API and says what it did.

``paths`` defines what a path is (:class:`WritePath`) and where it runs (:class:`Target`);
``writes_orm`` holds the ORM paths (unit of work, bulk DML, upserts), ``writes_sql`` the Core
and textual ones.  To add a write path: write its ``run(target, params) -> str`` and its
parameter drawer in the module of its kind and append a ``WritePath`` to that module's list
(``dialects`` limits it; ``fault`` names the known fault that holds it back while listed in
``common.KNOWN_FAULTS``; ``in_open_tx=False`` keeps it out of long-lived transactions).
"""

from __future__ import annotations

from .paths import DrawContext, Target, WritePath
from .writes_orm import ORM_PATHS
from .writes_sql import SQL_PATHS

PATHS: list[WritePath] = [*ORM_PATHS, *SQL_PATHS]

__all__ = ["PATHS", "DrawContext", "Target", "WritePath"]
