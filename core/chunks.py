"""Cutting long sequences into chunks: per query, per transaction, per task."""

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items; streams, never holds more than one chunk."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
