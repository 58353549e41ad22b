"""The order the controller takes training examples in (``controller.data_order``)."""

from ray_s3ft.controller import data_order


def test_each_epoch_is_a_permutation_and_a_resumed_cursor_continues_it():
    first = data_order("sft", 5, 0, 15, seed=0)  # three epochs of 5
    for epoch in range(3):
        assert sorted(first[5 * epoch : 5 * epoch + 5]) == [0, 1, 2, 3, 4]
    assert first[:5] != first[5:10]  # a new permutation each epoch
    # a run resumed at cursor 7 takes exactly what the uninterrupted run took from there
    assert data_order("sft", 5, 7, 8, seed=0) == first[7:15]


def test_the_streams_and_seeds_are_independent():
    sft, grpo = data_order("sft", 50, 0, 50, seed=0), data_order("grpo", 50, 0, 50, seed=0)
    assert sft != grpo
    assert data_order("sft", 50, 0, 50, seed=1) != sft
    assert data_order("sft", 50, 0, 50, seed=0) == sft  # deterministic
