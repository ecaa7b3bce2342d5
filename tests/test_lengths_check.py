"""check_lengths_in_range: the CPU check raises the caller's error with the values; the device check uses
torch._assert_async, which must exist in the installed torch (on a CPU tensor it raises at once)."""
import pytest
import torch

from fused_s2s.lengths_check import check_lengths_in_range


def _error(lo, hi):
    return ValueError(f"lengths in [{lo}, {hi}]")


@pytest.mark.parametrize("values, ok", [([1, 5, 3], True), ([0, 2], False), ([2, 6], False), ([], True)])
def test_cpu_check(values, ok):
    lengths = torch.tensor(values, dtype=torch.long)
    if ok:
        check_lengths_in_range(lengths, 5, _error)
    else:
        with pytest.raises(ValueError, match=rf"lengths in \[{min(values)}, {max(values)}\]"):
            check_lengths_in_range(lengths, 5, _error)


def test_device_assert_is_available():
    torch._assert_async(torch.tensor(True), "fine")
    with pytest.raises(RuntimeError, match="every length"):
        torch._assert_async(torch.tensor(False), "every length must be in [1, 5]")
