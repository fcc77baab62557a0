"""core/chunks.py: long sequences cut into lists, streamed."""

import pytest

from core.chunks import chunked


@pytest.mark.parametrize(
    ("items", "size", "chunks"),
    [
        (range(7), 3, [[0, 1, 2], [3, 4, 5], [6]]),
        (range(6), 3, [[0, 1, 2], [3, 4, 5]]),
        (range(2), 5, [[0, 1]]),
        ([], 3, []),
    ],
    ids=["remainder", "exact", "one-short-chunk", "empty"],
)
def test_cuts_into_lists_of_at_most_size(items, size, chunks):
    assert list(chunked(items, size)) == chunks


def test_streams_one_chunk_at_a_time():
    pulled = []

    def numbers():
        for number in range(10):
            pulled.append(number)
            yield number

    chunks = chunked(numbers(), 4)

    assert next(chunks) == [0, 1, 2, 3]
    assert pulled == [0, 1, 2, 3]
    assert next(chunks) == [4, 5, 6, 7]
    assert pulled == list(range(8))
