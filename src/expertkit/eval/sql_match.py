"""Normalised SQL and Cypher match: equal after parsing and re-printing (sqlglot for SQL), so
keyword case, whitespace, quoting style and a trailing semicolon do not count as differences."""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


def normalise_sql(sql: str, dialect: str = "sqlite") -> str | None:
    """A canonical text of ``sql``, or ``None`` when it does not parse."""
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    try:
        tree = sqlglot.parse_one(sql.strip().rstrip(";"), read=dialect)
    except (ParseError, TokenError, ValueError):
        return None
    if tree is None:
        return None
    return tree.sql(dialect=dialect, normalize=True, pretty=False).lower()


def sql_match(gold: str, predicted: str, dialect: str = "sqlite") -> bool:
    expected = normalise_sql(gold, dialect)
    return expected is not None and expected == normalise_sql(predicted, dialect)


_QUOTED = re.compile(r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def normalise_cypher(query: str) -> str:
    """Whitespace collapsed, trailing semicolon dropped, everything outside string literals in
    lower case (keywords and identifiers compare in any case; literal values exactly)."""
    text = _SPACES.sub(" ", query.strip().rstrip(";")).strip()
    parts = _QUOTED.split(text)
    return "".join(part if index % 2 else part.lower() for index, part in enumerate(parts))


def cypher_match(gold: str, predicted: str) -> bool:
    return normalise_cypher(gold) == normalise_cypher(predicted)
