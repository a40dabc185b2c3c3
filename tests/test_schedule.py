"""The logging schedule is computed exactly as the official code does (PROTOCOL §4)."""

import numpy as np

from jaxscale.train.schedule import logged_epochs


def test_T500_matches_protocol_list():
    expected = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 16, 18, 20, 23, 27, 30, 34, 39, 44, 50, 57, 65, 74, 84,
                96, 109, 123, 140, 159, 181, 205, 233, 265, 301, 341, 387, 440, 499]
    assert logged_epochs(500).tolist() == expected


def test_protocol_examples_counts_and_last():
    for T, n, last in [(500, 40, 499), (600, 41, 599), (1000, 42, 1000), (350, 39, 350)]:
        e = logged_epochs(T)
        assert len(e) == n and e[-1] == last and e[0] == 1
        assert np.all(np.diff(e) > 0)


def test_small_T():
    assert logged_epochs(1).tolist() == [1]
    assert logged_epochs(3).tolist() == [1, 2, 3]
    assert logged_epochs(10, points=50).tolist() == list(range(1, 11))
