"""Spacing repeated work by its cost: cheap runs wait the least gap, costly ones a
multiple of their length."""

import pytest

from corral.pacing import Spacing


@pytest.mark.parametrize(
    ("spacing", "ended", "took", "next_start"),
    [
        (Spacing(least=0.02), 10.0, 0.001, 10.02),  # cheap: the least gap
        (Spacing(least=0.02), 10.0, 1.0, 14.0),  # costly: four times its length
        (Spacing(factor=1), 5.0, 2.0, 7.0),  # half a core
        (Spacing(), 0.0, 0.0, 0.0),  # nothing ran yet: at once
    ],
)
def test_the_next_run_starts_after_a_gap_that_grows_with_the_last_runs_cost(
    spacing, ended, took, next_start
):
    assert spacing.next_start(ended, took) == pytest.approx(next_start)
