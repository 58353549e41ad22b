"""The actor-group helper in local mode (the same calls as on Ray, without Ray)."""

import pytest

from ray_s3ft.workers.group import ActorGroup, split_evenly


class Echo:
    def __init__(self, rank: int, base: int = 0):
        self.rank, self.base = rank, base

    def ident(self) -> int:
        return self.base + self.rank

    def double(self, items: list) -> list:
        return [(self.rank, 2 * x) for x in items]

    def doubles(self, items: list):
        for x in items:
            yield (self.rank, 2 * x)


def test_split_evenly_sizes_differ_by_at_most_one():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([1], 3) == [[1], [], []]


def test_calls_take_method_objects_and_map_keeps_order():
    g = ActorGroup(Echo, 3, name="echo", kwargs={"base": 10}, rank_kwargs=lambda i: {"rank": i},
                   local=True)  # fmt: skip
    assert g.call(Echo.ident) == [10, 11, 12]
    assert g.call_one(Echo.ident, rank=2) == 12
    assert g.map(Echo.double, [1, 2, 3, 4]) == [(0, 2), (0, 4), (1, 6), (2, 8)]
    assert g.scatter(Echo.double, [[1], [2], [3]]) == [[(0, 2)], [(1, 4)], [(2, 6)]]


def test_stream_chunks_gives_what_each_chunk_yielded():
    g = ActorGroup(Echo, 3, name="echo", rank_kwargs=lambda i: {"rank": i}, local=True)
    assert g.stream_chunks(Echo.doubles, [1, 2, 3, 4]) == [[(0, 2), (0, 4)], [(1, 6)], [(2, 8)]]
    assert g.stream_chunks(Echo.doubles, [5]) == [[(0, 10)]]  # empty chunks are not sent


def test_a_function_that_is_not_a_method_of_the_role_is_refused():
    g = ActorGroup(Echo, 1, name="echo", rank_kwargs=lambda i: {"rank": i}, local=True)
    with pytest.raises(TypeError, match="not a method of Echo"):
        g.call(len)
