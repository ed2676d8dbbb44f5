"""The statement of ``sqla-redis-cache explain``: a Python expression, evaluated safely.

The useful form of a statement to explain is the one the application writes, against its own
models: ``select(User).where(User.org_id == 1).options(selectinload(User.orders))``.  SQL text
would be of little use (``text()`` is never cached without declared tables, and the key
depends on the DBAPI parameters the ORM produces).  But the file may come from a ticket or a
log, so it is not handed to ``eval``: it is parsed as one expression and evaluated node by
node here, and only these are allowed:

- names: the public attributes of the ``--models`` modules (mapped classes, tables, columns,
  constants), SQLAlchemy's statement and loader constructs (:data:`CONSTRUCTS`), its types,
  ``cached`` / ``uncached``, and ``datetime``/``date``/``time``/``timedelta``/``Decimal``/
  ``UUID``;
- literals, containers, comparisons, arithmetic and bitwise operators (``&``, ``|``, ``~``),
  subscripts, attribute access to names without a leading underscore;
- calls of those constructs, of SQLAlchemy types and stdlib values above, and of the methods
  of SQL expressions, mapped attributes, loader options and ``func``.

Nothing else is callable: not the application's functions, not ``MetaData.drop_all``, not a
mapped class's constructor, no builtins, no lambdas or comprehensions.  ``--unsafe-eval``
evaluates the file as plain Python instead (for query builders of the application's own, in
files you trust).
"""

from __future__ import annotations

import ast
import datetime
import decimal
import operator
import types
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy
from sqlalchemy import orm, sql
from sqlalchemy.orm import Load
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.sql.operators import ColumnOperators
from sqlalchemy.types import TypeEngine

from .wiring._options import cached, uncached


class UnsafeExpression(ValueError):
    """The file holds something the safe evaluator refuses."""


_SQL = (  # noqa: SIM905
    "select func and_ or_ not_ text literal literal_column bindparam column desc asc "
    "nulls_first nulls_last case cast type_coerce exists distinct union union_all intersect "
    "except_ null true false tuple_ between over extract lateral any_ all_"
).split()
_ORM = (  # noqa: SIM905
    "aliased joinedload selectinload subqueryload lazyload noload raiseload defer undefer "
    "load_only contains_eager with_polymorphic with_expression selectin_polymorphic"
).split()
_VALUES: dict[str, Any] = {
    "datetime": datetime.datetime,
    "date": datetime.date,
    "time": datetime.time,
    "timedelta": datetime.timedelta,
    "Decimal": decimal.Decimal,
    "UUID": uuid.UUID,
}
_TYPES = {
    name: value
    for name, value in vars(sqlalchemy.types).items()
    if isinstance(value, type) and issubclass(value, TypeEngine) and not name.startswith("_")
}

#: what every expression may name, besides the models
CONSTRUCTS: dict[str, Any] = {
    **{name: getattr(sql.expression, name) for name in _SQL},
    **{name: getattr(orm, name) for name in _ORM},
    **_TYPES,
    **_VALUES,
    "cached": cached,
    "uncached": uncached,
}
_CALLABLE = frozenset(id(v) for v in CONSTRUCTS.values() if v is not sqlalchemy.func)
#: objects whose methods may be called
_RECEIVERS = (ClauseElement, ColumnOperators, Load, type(sqlalchemy.func))

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def namespace(modules: Iterable[types.ModuleType]) -> dict[str, Any]:
    """The names an expression may use: every module's public attributes, then the
    constructs (which win over a model's name)."""
    names: dict[str, Any] = {}
    for module in modules:
        names.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    names.update(CONSTRUCTS)
    return names


def _callable(fn: Any) -> bool:
    if id(fn) in _CALLABLE or isinstance(fn, type(sqlalchemy.func)):
        return True
    if isinstance(fn, type) and issubclass(fn, TypeEngine):
        return True
    owner = getattr(fn, "__self__", None)
    return isinstance(fn, types.MethodType | types.BuiltinMethodType) and isinstance(
        owner, _RECEIVERS
    )


class _Evaluator:
    def __init__(self, names: dict[str, Any]) -> None:
        self.names = names

    def eval(self, node: ast.AST) -> Any:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise UnsafeExpression(f"{type(node).__name__} is not allowed in a statement")
        return method(node)

    def _Expression(self, node: ast.Expression) -> Any:
        return self.eval(node.body)

    def _Constant(self, node: ast.Constant) -> Any:
        return node.value

    def _Name(self, node: ast.Name) -> Any:
        if node.id.startswith("_") or node.id not in self.names:
            raise UnsafeExpression(f"unknown name {node.id!r}")
        return self.names[node.id]

    def _Attribute(self, node: ast.Attribute) -> Any:
        if node.attr.startswith("_"):
            raise UnsafeExpression(f"private attribute {node.attr!r} is not allowed")
        return getattr(self.eval(node.value), node.attr)

    def _Call(self, node: ast.Call) -> Any:
        fn = self.eval(node.func)
        if not _callable(fn):
            raise UnsafeExpression(
                f"calling {ast.unparse(node.func)} is not allowed (only SQLAlchemy constructs "
                "and the methods of statements, columns and options; see --unsafe-eval)"
            )
        args = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                args.extend(self.eval(arg.value))
            else:
                args.append(self.eval(arg))
        kwargs = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise UnsafeExpression("**kwargs is not allowed")
            kwargs[keyword.arg] = self.eval(keyword.value)
        return fn(*args, **kwargs)

    def _BinOp(self, node: ast.BinOp) -> Any:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed")
        return op(self.eval(node.left), self.eval(node.right))

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise UnsafeExpression("use not_() for a SQL NOT")
        return op(self.eval(node.operand))

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        raise UnsafeExpression("use and_() / or_() (Python's and/or do not build SQL)")

    def _Compare(self, node: ast.Compare) -> Any:
        left = self.eval(node.left)
        result = None
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _COMPARE.get(type(op_node))
            if op is None:
                raise UnsafeExpression(
                    f"comparison {type(op_node).__name__} is not allowed (use .in_(), .is_())"
                )
            right = self.eval(right_node)
            part = op(left, right)
            result = part if result is None else sqlalchemy.and_(result, part)
            left = right
        return result

    def _List(self, node: ast.List) -> Any:
        return [self.eval(e) for e in node.elts]

    def _Tuple(self, node: ast.Tuple) -> Any:
        return tuple(self.eval(e) for e in node.elts)

    def _Set(self, node: ast.Set) -> Any:
        return {self.eval(e) for e in node.elts}

    def _Dict(self, node: ast.Dict) -> Any:
        if any(k is None for k in node.keys):
            raise UnsafeExpression("**mapping is not allowed")
        return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]

    def _Subscript(self, node: ast.Subscript) -> Any:
        return self.eval(node.value)[self.eval(node.slice)]

    def _Slice(self, node: ast.Slice) -> Any:
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if p is None else self.eval(p) for p in parts))


def evaluate(source: str, names: dict[str, Any], *, unsafe: bool = False) -> Any:
    """The value of the expression in ``source`` (see the module docstring)."""
    source = source.strip()
    if not source:
        raise UnsafeExpression("the statement file is empty")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise UnsafeExpression(
            f"not one Python expression: {exc.msg} (line {exc.lineno})"
        ) from None
    if unsafe:
        code = compile(tree, "<statement>", "eval")
        return eval(code, dict(names))
    return _Evaluator(names).eval(tree)
