"""The one percentile helper: check's self-test and the tools report it."""

import pytest

import _common
from udpcap_ctypes._stats import percentile


@pytest.mark.parametrize("values,fraction,expected", [
    ([1, 2, 3, 4], 0.50, 2),
    ([1, 2, 3, 4], 0.99, 4),
    ([1, 2, 3, 4], 0.0, 1),
    ([1, 2, 3, 4], 1.0, 4),
    ([5], 0.5, 5),
    (list(range(1, 101)), 0.07, 7),          # 0.07 * 100 is 7.000000000000001 in floats
    (list(range(1, 101)), 0.99, 99),
    (list(range(1, 1001)), 0.999, 999),
    ([], 0.5, None),
])
def test_percentile_is_nearest_rank(values, fraction, expected):
    assert percentile(values, fraction) == expected


def test_tools_report_the_package_percentile():
    samples = sorted([7, 1, 9, 3, 3, 12, 40, 2])
    for fraction in (0.1, 0.5, 0.9, 0.99):
        assert _common.percentile(samples, fraction) == percentile(samples, fraction)
