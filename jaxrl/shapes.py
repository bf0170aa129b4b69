"""Padded sizes for batches and sequences: few distinct shapes, so few compiles."""

from __future__ import annotations


def bucket(n: int, minimum: int = 16) -> int:
    """The next power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple
