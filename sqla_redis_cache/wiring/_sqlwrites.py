"""Which tables a ``text()`` statement or ``exec_driver_sql`` string writes.

SQLAlchemy knows nothing about the target of textual SQL, so the string itself is read.  A
cheap keyword scan settles the common case first: SQL without any write keyword writes nothing
(functions with side effects are beyond any parser: declare them with ``QueryCache`` rules).
Anything else is parsed with sqlglot when it is installed (the ``sql`` extra), or matched
against a few single-statement forms otherwise.  When the target cannot be determined the
answer is None and the caller invalidates the whole namespace: safe beats stale.

Names are normalised the way the database resolves them (unquoted identifiers fold to lower
case; SQLite folds quoted ones too: ``"APP_USER"`` and `` `App_User` `` name ``app_user``) and
reported both bare and qualified with the default schema, so ``public.app_user``, ``app_user``
and ``"app_user"`` all reach the tokens of the table SQLAlchemy calls ``app_user``.
Answers are memoised per SQL string (bounded), as the same statements run again and again.

Besides the tables named, the answer says what the foreign-key graph (``_fkgraph``) needs: the
tables truncated with ``CASCADE`` (PostgreSQL then empties every table referring to them,
whatever its foreign keys' actions) and whether the SQL may change the schema (the graph is
then read again).  Foreign-key actions themselves (``ON DELETE CASCADE``, SQLite's ``REPLACE``
deleting the conflicting row) are the graph's business: the SQL only names the target.
"""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

log = logging.getLogger("sqla_redis_cache")

_WRITE_WORDS = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|TRUNCATE|REPLACE|UPSERT|COPY|DROP|ALTER|CREATE|CALL|DO"
    r"|EXEC|EXECUTE|LOAD|IMPORT|RENAME|REFRESH|ATTACH|DETACH|VACUUM|CLUSTER|REINDEX)\b",
    re.IGNORECASE,
)
_IDENT = r'(?:"(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|[A-Za-z_][A-Za-z0-9_$]*)'
_SIMPLE = re.compile(
    r"^\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM"
    r"|TRUNCATE(?:\s+TABLE)?)\s+(?:ONLY\s+)?(" + _IDENT + r"(?:\s*\.\s*" + _IDENT + r")?)"
    r"(?!\s*[,.])",
    re.IGNORECASE,
)
_SCHEMA_WORDS = re.compile(r"\b(CREATE|ALTER|DROP|RENAME)\b", re.IGNORECASE)
_CASCADE_END = re.compile(r"\bCASCADE\s*$", re.IGNORECASE)
_SQLGLOT_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite", "mysql": "mysql"}
_MEMO_SIZE = 2048
_NOTHING: frozenset[str] = frozenset()


class SqlWrites(NamedTuple):
    #: tables written: empty if none, None if they cannot be determined
    tables: frozenset[str] | None
    #: tables emptied by ``TRUNCATE ... CASCADE`` (and with them every table referring to them)
    truncated: frozenset[str] = _NOTHING
    #: the SQL may create, alter or drop tables, so foreign keys may have changed
    schema_change: bool = False


_Names = list[tuple[str | None, str]]
_memo: dict[tuple[str, str, str | None, bool], SqlWrites] = {}
#: a sentinel for "sqlglot is not installed"
_NO_PARSER: Any = object()
_parser: list[Any] = []  # imported lazily: it costs ~100 ms and most apps never need it


def _sqlglot() -> Any:
    if not _parser:
        try:
            import sqlglot
            import sqlglot.expressions
        except ImportError:
            _parser.append(_NO_PARSER)
        else:
            _parser.append(sqlglot)
    return _parser[0]


def written_by_sql(
    sql: str, dialect: str, default_schema: str | None, *, use_parser: bool = True
) -> frozenset[str] | None:
    """Tables ``sql`` writes: empty if none, None if they cannot be determined."""
    return analyse_sql(sql, dialect, default_schema, use_parser=use_parser).tables


def analyse_sql(
    sql: str, dialect: str, default_schema: str | None, *, use_parser: bool = True
) -> SqlWrites:
    """What ``sql`` writes (see :class:`SqlWrites`), memoised per SQL string."""
    memo_key = (sql, dialect, default_schema, use_parser)
    found = _memo.get(memo_key)
    if found is not None:
        return found
    result = _analyse(sql, dialect, default_schema, use_parser)
    if result.tables is None:
        log.warning(
            "cannot tell which tables this SQL writes; its commit invalidates every table of "
            "the namespace (declare it or use Core constructs to avoid this): %.200s",
            sql,
        )
    if len(_memo) >= _MEMO_SIZE:
        _memo.clear()
    _memo[memo_key] = result
    return result


def _analyse(sql: str, dialect: str, default_schema: str | None, use_parser: bool) -> SqlWrites:
    if not _WRITE_WORDS.search(sql):
        return SqlWrites(_NOTHING)
    schema_change = _SCHEMA_WORDS.search(sql) is not None
    parser = _sqlglot() if use_parser else _NO_PARSER
    found: tuple[_Names, _Names] | None = None
    if parser is not _NO_PARSER:
        try:
            found = _parse(parser, sql, dialect)
        except Exception:  # a parser error is "unknown", never a crash of the application
            found = None
    if found is None:  # no parser, or SQL it does not know (SQLite's REPLACE INTO...)
        found = _fallback(sql)
    if found is None:
        return SqlWrites(None, schema_change=schema_change)
    fold = str.lower if dialect == "sqlite" else None  # SQLite ignores case, quoted or not

    def qualified(names: _Names) -> frozenset[str]:
        out: set[str] = set()
        for given_schema, given_name in names:
            schema, name = given_schema, given_name
            if fold is not None:
                schema, name = given_schema and fold(given_schema), fold(given_name)
            out.add(name)
            if schema or default_schema:
                out.add(f"{schema or default_schema}.{name}")
        return frozenset(out)

    names, truncated = found
    return SqlWrites(qualified(names), qualified(truncated), schema_change)


def _fold(identifier: str) -> str:
    if identifier[:1] in '"`[':
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def _fallback(sql: str) -> tuple[_Names, _Names] | None:
    body = sql.strip().rstrip(";")
    if ";" in body or re.match(r"^\s*WITH\b", body, re.IGNORECASE):
        return None
    match = _SIMPLE.match(body)
    if match is None:
        return None
    parts = re.findall(_IDENT, match.group(1))
    schema = _fold(parts[0]) if len(parts) == 2 else None
    names: _Names = [(schema, _fold(parts[-1]))]
    cascade = body.lstrip()[:8].upper() == "TRUNCATE" and _CASCADE_END.search(body)
    return names, (names if cascade else [])


def _parse(sqlglot: Any, sql: str, dialect: str) -> tuple[_Names, _Names] | None:
    exp = sqlglot.expressions
    read_only = (exp.Query, exp.Show, exp.Set, exp.Describe, exp.Pragma, exp.Transaction)
    dml = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
    names: _Names = []
    truncated: _Names = []
    for statement in sqlglot.parse(sql, read=_SQLGLOT_DIALECTS.get(dialect)):
        if statement is None:
            continue
        targets: list[Any] = []
        if isinstance(statement, exp.TruncateTable):
            targets.extend(statement.expressions)
            if str(statement.args.get("option") or "").upper() == "CASCADE":
                truncated.extend(_names(exp, statement.expressions) or ())
        elif isinstance(statement, exp.Drop):
            if str(statement.args.get("kind")).upper() != "TABLE":
                return None
            targets.extend(statement.args.get("tables") or [statement.this])
        elif isinstance(statement, exp.Alter | exp.Copy):
            targets.append(statement.this)
        elif isinstance(statement, exp.Create):
            if str(statement.args.get("kind")).upper() not in {"TABLE", "INDEX"}:
                return None
        elif not isinstance(statement, read_only + dml):
            return None  # CALL, DO, EXECUTE, unparsed commands...: unknown
        targets.extend(node.this for node in statement.find_all(*dml))
        found = _names(exp, targets)
        if found is None:
            return None
        names.extend(found)
    return names, truncated


def _names(exp: Any, targets: list[Any]) -> _Names | None:
    names: _Names = []
    for target in targets:
        table = target.this if isinstance(target, exp.Schema) else target
        if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
            return None
        names.append((_ident(exp, table.args.get("db")), _ident(exp, table.this) or ""))
    return names


def _ident(exp: Any, node: Any) -> str | None:
    if not isinstance(node, exp.Identifier):
        return None
    name: str = node.this
    return name if node.quoted else name.lower()
