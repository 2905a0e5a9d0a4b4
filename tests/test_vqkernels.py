"""The generated nearest-code kernel (codec/codecs/_vqkernels.py) against a float64 brute force."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from codec.codecs import _vqkernels as K  # noqa: E402

# every dc is its own generated kernel (1-11 s to compile each, so not all of 1..128); these cover dc = 1, odd and
# even dc, Q = 6 / 4 / 2 (dc <= 50, 64, the limit), S = 16 (the limit) and larger, and tile sizes from 64 rows up.
# The large dc compile slowest: they run with `pytest -m slow` (CI runs both).
DCS = [1, 2, 3, 5, 16] + [pytest.param(dc, marks=pytest.mark.slow) for dc in (33, 64, K.NUMBA_MAX_DC)]
KS = [1, 3, 7, 64, 130]  # k = 1, k not a multiple of Q (padding), k > 128


def _assign(x, cb, shape=None):
    c, bias = K.prep_codebook(cb, shape)
    out = np.full(x.shape[0], -7, np.int32)
    K.nearest_kernel(x.shape[1], shape)(x, c, bias, out)
    return out


def _check_against_float64(x, cb, got):
    n, k = x.shape[0], cb.shape[0]
    d = ((x.astype(np.float64)[:, None, :] - cb.astype(np.float64)[None]) ** 2).sum(-1)
    ref = d.argmin(1)
    srt = np.sort(d, 1)
    gap = srt[:, 1] - srt[:, 0] if k > 1 else np.full(n, np.inf)
    clear = gap > 1e-4 * (1 + srt[:, 0])  # rows whose best code is not a float32 near-tie
    assert clear.mean() > 0.98
    np.testing.assert_array_equal(got[clear], ref[clear])
    # near-ties: the chosen code is one of the tied ones
    assert np.all(d[np.arange(n), got] - srt[:, 0] <= 1e-4 * (1 + srt[:, 0]))


@pytest.mark.parametrize("dc", DCS)
def test_matches_float64_bruteforce(dc):
    rng = np.random.default_rng(dc)
    k = KS[dc % len(KS)]
    H, _, S = K.block_shape(dc)
    n = H * S * 2 + 37  # two full tiles and a partial one
    x = rng.standard_normal((n, dc), dtype=np.float32)
    cb = rng.standard_normal((k, dc), dtype=np.float32)
    _check_against_float64(x, cb, _assign(x, cb))


# the shapes block_shape picks on other hosts (AVX2: Q = 3) and odd ones the generator must also get right
@pytest.mark.slow
@pytest.mark.parametrize("dc,shape", [(5, (4, 3, 32)), (25, (4, 3, 16)), (7, (3, 5, 48)), (4, (1, 1, 16)), (9, (2, 7, 20))])
def test_other_block_shapes(dc, shape):
    rng = np.random.default_rng(100 + dc)
    n = shape[0] * shape[2] * 3 + 5
    x = rng.standard_normal((n, dc), dtype=np.float32)
    cb = rng.standard_normal((61, dc), dtype=np.float32)
    _check_against_float64(x, cb, _assign(x, cb, shape))


def test_block_shape_fits_the_register_file():
    for dc in range(1, K.NUMBA_MAX_DC + 1):
        H, Q, S = K.block_shape(dc)
        assert H * Q + H <= (32 if K._wide_vectors() else 16)
        assert S % 16 == 0 and S >= 16 and Q >= 2
        assert dc * H * S * 4 <= 40 * 1024 or S == 16  # the tile stays near L1 size


def _compiled_tile(dc):
    """The production kernel's per-tile function for ``dc``, compiled by one call."""
    K.nearest_kernel(dc)(np.zeros((1, dc), np.float32), *K.prep_codebook(np.ones((6, dc), np.float32)), np.empty(1, np.int32))
    return inspect.getclosurevars(K.nearest_kernel(dc).py_func).nonlocals["tile"]


def test_tile_uses_512_bit_vectors_where_the_target_has_avx512():
    """LLVM's Intel server tuning prefers 256-bit vectors unless told otherwise (1.2-1.8x slower)."""
    if not K._wide_vectors():
        pytest.skip("numba does not target AVX-512 here")
    tile = _compiled_tile(5)
    assert 'prefer-vector-width"="512"' in "\n".join(tile.inspect_llvm().values())
    fmas = [line for line in "\n".join(tile.inspect_asm().values()).splitlines() if "vfmadd" in line]
    assert sum("zmm" in line for line in fmas) > 0.9 * len(fmas) > 0


@pytest.mark.parametrize("dc", [5, pytest.param(25, marks=pytest.mark.slow)])
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
    c, bias = K.prep_codebook(cb, (4, 4, 16))
    assert c.shape == (8, 3) and c.dtype == np.float32 and bias.dtype == np.float32
    np.testing.assert_array_equal(c[:5], cb)
    assert not c[5:].any() and np.all(bias[5:] == -np.inf)
    np.testing.assert_allclose(bias[:5], -0.5 * (cb.astype(np.float64) ** 2).sum(1), rtol=1e-7)
    Q = K.block_shape(3)[1]
    assert K.prep_codebook(cb)[0].shape == (-(-5 // Q) * Q, 3)


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


def test_the_inner_loop_is_vectorised():
    """LLVM silently leaves the loop scalar when it cannot prove the accesses independent (8x
    slower, still correct): packed FMAs must appear in the tile function's machine code."""
    asm = "\n".join(_compiled_tile(25).inspect_asm().values())
    packed = sum(1 for line in asm.splitlines() if "vfmadd" in line and "ps" in line.split()[0] and ("mm" in line))
    scalar = sum(1 for line in asm.splitlines() if "vfmadd" in line and line.split()[0].endswith("ss"))
    H, Q, _ = K.block_shape(25)
    assert packed >= 25 * H * Q and packed > scalar


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(dc=st.sampled_from([1, 3, 5]), shape=st.sampled_from([None, (4, 3, 16), (2, 5, 16)]),
       n=st.integers(0, 300), k=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_small_integer_data_is_exact(dc, shape, n, k, seed):
    """Small integers make every product, sum and bias exact in float32, so the kernel must equal
    the float64 argmin exactly, first index on ties (which the narrow value range makes common)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (n, dc)).astype(np.float32)
    cb = rng.integers(-3, 4, (k, dc)).astype(np.float32)
    got = _assign(x, cb, shape)
    d = ((x.astype(np.float64)[:, None, :] - cb.astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(got, d.argmin(1) if n else np.empty(0, np.int64))
