"""Group bookkeeping shared by the reward and advantage functions (N samples in K groups)."""
from __future__ import annotations

from collections.abc import Hashable

import torch


def group_index(group_ids) -> tuple[torch.Tensor, int]:
    """Map hashable group ids to 0..K-1 in order of first appearance.

    Returns:
        (index LongTensor [N], K)

    >>> group_index(["b", "a", "b"])
    (tensor([0, 1, 0]), 2)
    """
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.tolist()
    seen: dict[Hashable, int] = {}
    index = [seen.setdefault(g, len(seen)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long), len(seen)


def check_lengths(name: str, values, n: int) -> None:
    """Raise ValueError unless `values` has one entry per sample."""
    if len(values) != n:
        raise ValueError(f"`{name}` has {len(values)} entries, expected one per sample ({n})")
