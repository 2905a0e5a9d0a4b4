"""Soft-label sources: IterSource re-batching is exact and linear (slices, not re-concatenation)."""

from __future__ import annotations

import pytest
import torch

from codec.softlabels.sources import IterSource


@pytest.mark.parametrize("sizes,bs", [([7, 3, 11, 1, 9], 4), ([1] * 10, 3), ([20], 5), ([5, 5], 5), ([2, 9], 16), ([], 3)])
def test_iter_source_batches_are_the_concatenation_cut_at_batch_size(sizes, bs):
    g = torch.Generator().manual_seed(0)
    parts = [torch.rand(n, 6, generator=g) for n in sizes]
    src = IterSource(lambda: iter(parts), classes=6)
    got = list(src.batches(bs, None))
    full = torch.cat(parts) if parts else torch.zeros(0, 6)
    assert [b.shape[0] for b in got] == [min(bs, full.shape[0] - s) for s in range(0, full.shape[0], bs)]
    assert torch.equal(torch.cat(got) if got else torch.zeros(0, 6), full)


def test_iter_source_slices_a_large_batch_without_copying():
    big = torch.rand(1000, 4)
    got = list(IterSource(lambda: iter([big]), classes=4).batches(10, None))
    assert len(got) == 100
    # every batch is a view into the incoming tensor: no per-batch re-concatenation of the rest
    assert all(b.untyped_storage().data_ptr() == big.untyped_storage().data_ptr() for b in got)
