"""Fixed-size batches of an iterable: rows per SQL statement, ids per API request.

`itertools.batched` does this from Python 3.12 on; the project supports 3.11
(`requires-python`), so this is its one stand-in. Switch to `itertools.batched` once 3.11 is
dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: Rows per statement: well under SQLite's bound-parameter limit (32,766 since 3.32), and
#: small enough that a statement's memory stays flat.
SQL_BATCH = 500


def batched(items: Iterable[T], n: int) -> Iterator[tuple[T, ...]]:
    """Tuples of `n` items in order, the last one shorter (as `itertools.batched`)."""
    if n < 1:
        raise ValueError("n must be at least one")
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, n)):
        yield batch
