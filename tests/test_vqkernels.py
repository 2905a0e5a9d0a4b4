"""The generated nearest-code kernel (codec/codecs/_vqkernels.py) against a float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from codec.codecs import _vqkernels as K  # noqa: E402

# every dc is its own generated kernel (1-10 s to compile each, so not all of 1..50); these cover the two FMA
# chains with an odd/even number of terms, both sides of the J = 4 / 8 and H = 1 / 2 (row halves, dc >= 16) switches,
# tile sizes 512, 256, 192, 128 and the limit.
DCS = [1, 2, 3, 5, 16, 32, 33, K.NUMBA_MAX_DC]
KS = [1, 3, 6, 64, 130]  # k = 1, k not a multiple of codes_per_pass (padding), k > 128


def _assign(x, cb):
    c, bias = K.prep_codebook(cb)
    out = np.full(x.shape[0], -1, np.int32)
    K.nearest_kernel(x.shape[1])(x, c, bias, out)
    return out


@pytest.mark.parametrize("dc", DCS)
def test_matches_float64_bruteforce(dc):
    rng = np.random.default_rng(dc)
    k = KS[dc % len(KS)]
    n = K._tile_rows(dc) * 2 + 37  # two full tiles and a partial one
    x = rng.standard_normal((n, dc), dtype=np.float32)
    cb = rng.standard_normal((k, dc), dtype=np.float32)
    got = _assign(x, cb)
    d = ((x.astype(np.float64)[:, None, :] - cb.astype(np.float64)[None]) ** 2).sum(-1)
    ref = d.argmin(1)
    srt = np.sort(d, 1)
    gap = srt[:, 1] - srt[:, 0] if k > 1 else np.full(n, np.inf)
    clear = gap > 1e-4 * (1 + srt[:, 0])  # rows whose best code is not a float32 near-tie
    assert clear.mean() > 0.98
    np.testing.assert_array_equal(got[clear], ref[clear])
    # near-ties: the chosen code is one of the tied ones
    assert np.all(d[np.arange(n), got] - srt[:, 0] <= 1e-4 * (1 + srt[:, 0]))


@pytest.mark.parametrize("dc", [5, 25])
def test_exact_ties_go_to_lower_index(dc):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((7, dc), dtype=np.float32)
    cb = np.concatenate([base, base[::-1], base])  # every code appears three times
    x = base[rng.integers(0, 7, 300)] + np.float32(0.01) * rng.standard_normal((300, dc), dtype=np.float32)
    got = _assign(x, cb)
    d = ((x.astype(np.float64)[:, None, :] - cb.astype(np.float64)[None]) ** 2).sum(-1)
    assert np.array_equal(got, d.argmin(1))  # argmin: first of the equal minima
    assert got.max() < 7


def test_prep_codebook_pads_with_losing_codes():
    cb = np.arange(15, dtype=np.float32).reshape(5, 3)
    c, bias = K.prep_codebook(cb)
    assert K.codes_per_pass(3) == 4
    assert c.shape == (8, 3) and c.dtype == np.float32 and bias.dtype == np.float32
    np.testing.assert_array_equal(c[:5], cb)
    assert not c[5:].any() and np.all(bias[5:] == -np.inf)
    np.testing.assert_allclose(bias[:5], -0.5 * (cb.astype(np.float64) ** 2).sum(1), rtol=1e-7)


def test_empty_input():
    out = np.empty(0, np.int32)
    c, bias = K.prep_codebook(np.ones((4, 5), np.float32))
    K.nearest_kernel(5)(np.empty((0, 5), np.float32), c, bias, out)
    assert out.shape == (0,)


@pytest.mark.parametrize("dc", [5, 16])
def test_non_finite_rows_get_minus_one(dc):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1100, dc), dtype=np.float32)
    x[3, 0] = np.nan
    x[600, dc - 1] = np.inf
    x[1099, dc // 2] = -np.inf
    got = _assign(x, rng.standard_normal((9, dc), dtype=np.float32))
    bad = ~np.isfinite(x).all(1)
    assert np.all(got[bad] == -1) and np.all(got[~bad] >= 0)
