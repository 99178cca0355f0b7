"""bulk: thousands of rows written and read at the driver's speed.

A submission of 10,000 jobs writes about 30,000 event rows and 20,000 per-row
updates. Through ``session.execute(stmt, rows)`` SQLAlchemy builds and converts
every row's parameters in Python (a JSON document serialized per row, a
timestamp formatted per row), which costs about three times what SQLite itself
spends on the rows. :func:`executemany` compiles the statement once, converts
each distinct bound value once by its column's type (the ``{}`` or the ``now``
that 10,000 rows share is serialized once) and hands the rows to the driver's
``executemany``. On PostgreSQL it is plain ``session.execute``: SQLAlchemy
batches inserts there (``insertmanyvalues``), which a per-row driver
``executemany`` would undo. :func:`shared_json` reads JSON columns that many
rows share (a batch's config, resources, tags) decoding each distinct document once,
and :func:`records` hands thousands of read rows on as named tuples.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Text, type_coerce
from sqlalchemy.engine import Dialect, Result
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ColumnElement, Label
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

#: Compiled statements by (statement, dialect, keys), most recent last. An entry holds
#: its statement, so the ``id`` in its key cannot be reused while it is cached. A
#: statement object never changes, so a module-level one is compiled once.
_COMPILED: OrderedDict[tuple[int, int, tuple[str, ...]], tuple[UpdateBase, SQLCompiler]] = (
    OrderedDict()
)
_COMPILED_MAX = 64


def _compiled(stmt: UpdateBase, dialect: Dialect, keys: list[str]) -> SQLCompiler:
    key = (id(stmt), id(dialect), tuple(keys))
    got = _COMPILED.get(key)
    if got is not None and got[0] is stmt:
        _COMPILED.move_to_end(key)
        return got[1]
    compiled = stmt.compile(dialect=dialect, column_keys=keys)
    assert isinstance(compiled, SQLCompiler)
    _COMPILED[key] = (stmt, compiled)
    if len(_COMPILED) > _COMPILED_MAX:
        _COMPILED.popitem(last=False)
    return compiled


def executemany(
    session: Session,
    stmt: UpdateBase,
    rows: Sequence[Mapping[str, Any]],
    defaults: Mapping[str, Any] | None = None,
) -> int:
    """Execute ``stmt`` (an INSERT, or an UPDATE/DELETE with ``bindparam`` values) once
    per row of ``rows``, in the session's transaction; the number of rows matched,
    summed. ``defaults`` gives the values of keys a row leaves out (converted once
    when every row has the same keys).

    Values are converted exactly as ``session.execute(stmt, rows)`` converts them,
    so what is stored is the same either way. A statement object used again (a
    module-level one) is compiled once. What the fast path cannot take as it is
    (rows with different keys, a column default computed in Python for a key the
    rows leave out, an expanding ``IN``) goes through ``session.execute``.
    """
    if not rows:
        return 0
    defaults = defaults or {}

    def plain() -> int:
        full = [{**defaults, **r} for r in rows] if defaults else rows
        return int(session.execute(stmt, full).rowcount)  # type: ignore[attr-defined]

    dialect = session.get_bind().dialect
    if dialect.name != "sqlite" or dialect.paramstyle != "qmark":
        return plain()
    given = rows[0].keys()
    if any(r.keys() != given for r in rows):
        return plain()
    keys = [*given, *(k for k in defaults if k not in given)]
    compiled = _compiled(stmt, dialect, keys)
    names = compiled.positiontup
    if (
        names is None
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or any(b.expanding for b in compiled.binds.values())
    ):
        return plain()
    # Per position: the row key it reads and the column type's converter with its
    # results so far by value identity (the rows keep every value alive while this
    # runs), or no key and the converted value that is the same in every row (a
    # default, or a literal of the statement).
    plan: list[tuple[str | None, Any, Any, dict[int, Any]]] = []
    for name in names:
        bp = compiled.binds[name]
        proc = bp.type._cached_bind_processor(dialect)
        if name in given:
            plan.append((name, proc, None, {}))
        else:
            value = defaults.get(name, bp.effective_value)
            plan.append((None, None, proc(value) if proc and value is not None else value, {}))
    params: list[tuple[Any, ...]] = []
    append = params.append
    for row in rows:
        out = []
        for key, proc, literal, seen in plan:
            if key is None:
                out.append(literal)
                continue
            value = row[key]
            if proc is None or value is None:
                out.append(value)
                continue
            got = seen.get(id(value), seen)
            if got is seen:
                got = seen[id(value)] = proc(value)
            out.append(got)
        append(tuple(out))
    result = session.connection().exec_driver_sql(compiled.string, params)
    return int(result.rowcount)


class ByIdentity:
    """What was worked out from each of the documents rows read with
    :func:`shared_json` share, found again by the document's identity. An entry keeps
    its document alive, so the ``id`` it is filed under cannot be reused."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, Any]] = {}

    def get(self, document: Any, make: Callable[[Any], Any]) -> Any:
        got = self._seen.get(id(document))
        if got is not None and got[0] is document:
            return got[1]
        value = make(document)
        self._seen[id(document)] = (document, value)
        return value


class SharedJson(TypeDecorator[Any]):
    """A JSON column read for thousands of rows that mostly hold the same documents
    (the config, resources and tags of a batch's jobs): each distinct text is decoded
    once, and rows with equal text get the SAME object, so callers must not change
    what they read. Use one instance per query (:func:`shared_json`).

    On PostgreSQL the driver has already decoded JSONB; those values pass through.
    """

    impl = Text
    cache_ok = False  # the instance holds this query's documents

    def __init__(self) -> None:
        super().__init__()
        self.documents: dict[str, Any] = {}

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if not isinstance(value, str):
            return value
        got = self.documents.get(value, self)
        if got is self:
            got = self.documents[value] = json.loads(value)
        return got


def shared_json(*columns: Any) -> list[Label[Any]]:
    """``columns`` (JSON columns) labelled with their own names, read as
    :class:`SharedJson` (one decoder for all of them, so equal documents are one
    object whichever column holds them)."""
    decoder = SharedJson()
    return [type_coerce(c, decoder).label(c.key) for c in columns]


@functools.lru_cache(maxsize=64)
def _record_type(keys: tuple[str, ...]) -> Any:
    return namedtuple("Record", keys)  # from a query's column names


def records(result: Result[Any]) -> list[Any]:
    """Every row of ``result`` as a named tuple with the same attributes.

    Reading a column of a SQLAlchemy ``Row`` by name costs about 0.3 µs (a lookup
    by key each time); a loop that reads ten columns of 10,000 rows spends 30 ms
    on it. A named tuple's attribute is an index: converting costs about 0.45 µs a
    row, once, so it pays from the second column read. For the hot loops over a
    whole batch (claim, specs), not for a handful of rows.
    """
    record = _record_type(tuple(result.keys()))
    return list(map(record._make, result))


class unindexed(ColumnElement[Any]):
    """``column`` in a condition that must not choose the query's index.

    SQLite keeps no statistics unless ``ANALYZE`` ran, and then weighs ``array_id = ?``
    and ``state = ?`` alike: recording an array's 1,000 tasks walked the state
    index over EVERY ``queued`` job of the site (10,000 during one submission, all
    of them in production), not its array's 1,000 rows. ``+column`` is SQLite's
    documented way to leave a term out of index selection; PostgreSQL, which plans
    from statistics, gets the plain column.
    """

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column
        self.type = column.type


@compiles(unindexed)
def _unindexed(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + str(compiler.process(element.column, **kw))
