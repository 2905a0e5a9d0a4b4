"""The cell-index nearest-code search (codec/codecs/_vqgrid.py) against brute force, and the encode that uses it.

``nearest_code(method="grid")`` must give exactly what ``method="numba"`` (brute force over all codes, the same
float32 scores) gives, ties to the lower index included; the one allowed difference is a row whose two best codes are
within float32 rounding of each other, where the grid keeps the code that is nearest in exact arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.codecs import _vqgrid as G
from codec.codecs import vq as V
from codec.codecs.vq import VQCodec, nearest_code, to_space
from codec.errors import InvalidInputError

EPS32 = float(np.finfo(np.float32).eps)


def _grid_vs_brute(x, cb):
    g = nearest_code(x, cb, method="grid")
    b = nearest_code(x, cb, method="numba")
    return g, b


def _adversarial(kind, rng, dc, k, n):
    """(x, cb) float32: codes and rows built to hit ties, duplicates, flat dimensions and rows off the grid."""
    if kind == "normal":
        return rng.standard_normal((n, dc)), rng.standard_normal((k, dc))
    if kind == "duplicates":  # every code repeated ~3 times; rows on the codes themselves (exact ties) and between
        base = rng.standard_normal((max(1, k // 3), dc))
        cb = base[rng.integers(0, len(base), k)]
        return np.concatenate([cb[rng.integers(0, k, n // 2)], rng.standard_normal((n - n // 2, dc))]), cb
    if kind == "lattice":  # integer codes, half-integer rows: many rows equidistant from several codes, exactly
        return rng.integers(-8, 9, (n, dc)) / 2, rng.integers(-3, 4, (k, dc))
    if kind == "outside":  # most rows far beyond the outermost codes (the grid's all-codes cell)
        return rng.standard_normal((n, dc)) * 50, rng.standard_normal((k, dc))
    if kind == "flat":  # one dimension where every code has the same value
        cb = rng.standard_normal((k, dc))
        cb[:, 0] = 1.5
        return rng.standard_normal((n, dc)), cb
    raise AssertionError(kind)


KINDS = ("normal", "duplicates", "lattice", "outside", "flat")


@pytest.mark.parametrize("dc", range(1, G.GRID_MAX_DC + 1))
def test_grid_equals_bruteforce(dc):
    rng = np.random.default_rng(dc)
    for k in (1, 3, 17, 1024):
        # (an index build at k = 1024 takes seconds at dc > 4)
        for kind in KINDS if k < 1024 else ("lattice", "duplicates") if dc > 4 else ("lattice", "duplicates", "normal"):
            x, cb = (a.astype(np.float32) for a in _adversarial(kind, rng, dc, k, 2000))
            g, b = _grid_vs_brute(x, cb)
            assert g.dtype == np.int64
            np.testing.assert_array_equal(g, b, err_msg=f"dc={dc} k={k} {kind}")


def test_grid_differs_only_at_float32_near_ties():
    """Codes 1e4 apart around 3e4 in one dimension: the scores (~|mu|^2 / 2 ~ 5e8, float32 spacing 32) cannot tell
    neighbouring codes apart for some rows; there, and only there, the grid may keep a different code than brute force."""
    rng = np.random.default_rng(7)
    cb = (rng.standard_normal((1024, 1)) * 1e4 + 3e4).astype(np.float32)
    x = (rng.standard_normal((20000, 1)) * 1e4 + 3e4).astype(np.float32)
    g, b = _grid_vs_brute(x, cb)
    X, C = x.astype(np.float64), cb.astype(np.float64)
    d = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    w = np.nonzero(g != b)[0]
    assert len(w) < 0.01 * len(x)
    scale = (X[w] ** 2).sum(1) + (C ** 2).sum(1).max()
    gap = np.abs(d[w, g[w]] - d[w, b[w]])
    assert np.all(gap <= 4 * EPS32 * scale)  # within float32 rounding of the scores
    best = d.min(1)
    assert np.all(d[np.arange(len(x)), g] - best <= 4 * EPS32 * ((X ** 2).sum(1) + (C ** 2).sum(1).max()))


# values that are multiples of 1/4 in [-6, 6]: every score x.mu - |mu|^2 / 2 is exact in float32, so brute force and
# the grid see the same exact numbers and must agree everywhere, ties (frequent at this resolution) included
_quarter = st.integers(-24, 24).map(lambda v: v / 4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(dc=st.sampled_from([1, 2, 3, 5, 8]), data=st.data())
def test_grid_equals_bruteforce_property(dc, data):
    k = data.draw(st.integers(1, 48), label="k")
    cb = np.array(data.draw(st.lists(st.lists(_quarter, min_size=dc, max_size=dc), min_size=k, max_size=k)), np.float32)
    rows = data.draw(st.lists(st.lists(_quarter, min_size=dc, max_size=dc), min_size=0, max_size=60))
    far = data.draw(st.lists(st.lists(st.integers(-400, 400).map(float), min_size=dc, max_size=dc), max_size=5))
    x = np.array(rows + far, np.float32).reshape(-1, dc)
    g = nearest_code(x, cb, method="grid")
    np.testing.assert_array_equal(g, nearest_code(x, cb, method="numba"))
    if len(x):  # and both are argmin's (exact here, lowest index on ties)
        d = ((x.astype(np.float64)[:, None, :] - cb.astype(np.float64)[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(g, d.argmin(1))


def test_assign_marks_non_finite_rows_and_nearest_code_raises():
    rng = np.random.default_rng(1)
    cb = rng.standard_normal((300, 3)).astype(np.float32)
    x = rng.standard_normal((500, 3)).astype(np.float32)
    x[[4, 77, 499], [0, 2, 1]] = [np.nan, np.inf, -np.inf]
    out = np.full(len(x), 99, np.int32)
    G.assign(x, G.build_index(cb), out)
    ok = np.ones(len(x), bool)
    ok[[4, 77, 499]] = False
    assert np.all(out[~ok] == -1)
    np.testing.assert_array_equal(out[ok], nearest_code(x[ok], cb, method="numba"))
    with pytest.raises(InvalidInputError, match=r"non-finite values in the latents \(row 4\)"):
        nearest_code(x, cb, method="grid")
    with pytest.raises(InvalidInputError, match="non-finite values in the codebook"):
        nearest_code(x[ok], np.where(np.arange(300)[:, None] == 5, np.nan, cb).astype(np.float32), method="grid")


def test_grid_arguments():
    x = np.zeros((4, 9), np.float32)
    with pytest.raises(InvalidInputError, match="method 'grid' takes CPU tensors with dc <= 8"):
        nearest_code(x, np.zeros((6, 9), np.float32), method="grid")
    with pytest.raises(InvalidInputError, match="method must be"):
        nearest_code(x, np.zeros((6, 9), np.float32), method="kd-tree")
    empty = nearest_code(np.zeros((0, 2), np.float32), np.ones((5, 2), np.float32), method="grid")
    assert empty.shape == (0,) and empty.dtype == np.int64
    t = nearest_code(torch.tensor([[0.9, 1.0], [-3.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]]), method="grid")
    assert isinstance(t, torch.Tensor) and t.tolist() == [1, 2]


def test_auto_picks_the_grid_only_where_it_pays():
    rng = np.random.default_rng(2)
    cb = rng.standard_normal((1024, 5)).astype(np.float32)
    V._GRID_CACHE.clear()
    V._GRID_SEEN.clear()
    need = V.GRID_MIN_ROWS_PER_CODE[5] * 1024
    assert V._auto_method(cb, 1000) == "numba"  # too few rows per code to build an index for
    assert V._auto_method(cb, need // 2) == "numba"
    assert V._auto_method(cb, need // 2) == "grid"  # chunks of one stream add up: built now
    assert V._auto_method(cb, 10) == "grid"  # and reused for any number of rows
    assert V._auto_method(None, 10**7) == "torch"  # another device
    few = rng.standard_normal((5, 8)).astype(np.float32)  # 5 codes in 8-D: the lists are all codes
    assert V.cell_index(few) is None and V._auto_method(few, 10**7) == "numba"
    for _ in range(V._GRID_CACHE_SIZE + 2):  # the cache stays bounded
        V.cell_index(rng.standard_normal((64, 2)).astype(np.float32))
    assert len(V._GRID_CACHE) <= V._GRID_CACHE_SIZE


# ------------------------------------------------------------------------------------------------
# the encode: cell index + folded projection vs the explicit path it replaced
# ------------------------------------------------------------------------------------------------
def _reference_encode(c: VQCodec, z) -> np.ndarray:
    """The encode before the change: rows into the codec's space explicitly (to_space: temperature, softmax or
    centring in fp32), one fp32 projection, brute-force assignment."""
    u = to_space(z, c.space, c.input, c.temperature, classes=c.classes)
    h = (u @ c.encoder).reshape(-1, c.dc)
    return nearest_code(h, c.codebook, method="numba").numpy().reshape(len(u), c.m), h


def _codec(space, inp, T, *, C=100, dh=40, dc=2, k=256, seed=0, encode_dtype="f32"):
    g = torch.Generator().manual_seed(seed)
    c = VQCodec(C, dh, dc, k, input=inp, temperature=T, space=space, encode_dtype=encode_dtype)
    P = torch.linalg.qr(torch.randn(C, dh, generator=g))[0]
    z = torch.randn(3000, 8, generator=g) @ torch.randn(8, C, generator=g) * 2 + torch.randn(3000, C, generator=g)
    z = z + 40  # a common offset: the centring must remove it
    x = torch.softmax(z / T, 1) if inp == "probs" else z
    u = to_space(x, space, inp, T, classes=C)
    h = (u @ P).reshape(-1, dc)
    cb = h[torch.randperm(len(h), generator=g)[:k]]
    return c.set_params(encoder=P, decoder=P.T, codebook=cb), x


@pytest.mark.parametrize("block_rows", [None, 128])
@pytest.mark.parametrize("space,inp,T", [("probs", "logits", 1.0), ("probs", "logits", 20.0), ("probs", "probs", 1.0),
                                         ("logits", "logits", 1.0), ("logits", "logits", 20.0), ("logits", "probs", 1.0)])
def test_encode_matches_the_explicit_path(space, inp, T, block_rows, monkeypatch):
    """Same indices as the explicit path, up to float32 near-ties: where the temperature and centring are folded
    into P (logit space) the latents differ by float32 rounding, so a row near the boundary of two codes may switch.
    ``block_rows``: the CPU projection's blocks made small, so each 700-row chunk is projected in 128-row blocks
    (the last one partial); None: one block per chunk (C = 100)."""
    c, x = _codec(space, inp, T)
    if block_rows:
        monkeypatch.setattr(V, "PROJECTION_BLOCK_BYTES", 4 * c.classes * block_rows)
    ref, h = _reference_encode(c, x)
    V._GRID_CACHE.clear()
    V._GRID_SEEN.clear()
    got = c.encode_indices(x, chunk=700)  # several chunks, one partial
    assert V._auto_method(np.ascontiguousarray(c.codebook.numpy()), 0) == "grid"  # the encode indexed the codebook
    assert got.shape == ref.shape and got.dtype == np.uint8
    differ = got != ref
    assert differ.mean() < 1e-3, differ.mean()
    # a switched segment is a near-tie in the explicit path's own latents
    hd, cbd = h.double(), c.codebook.double()
    rows = torch.from_numpy(np.nonzero(differ.reshape(-1))[0])
    dg = ((hd[rows] - cbd[torch.from_numpy(got.reshape(-1)[rows.numpy()].astype(np.int64))]) ** 2).sum(1)
    dr = ((hd[rows] - cbd[torch.from_numpy(ref.reshape(-1)[rows.numpy()].astype(np.int64))]) ** 2).sum(1)
    assert torch.all((dg - dr).abs() <= 1e-4 * (1 + dr))


def test_encode_brute_force_and_grid_agree_and_catch_nan():
    c, x = _codec("probs", "logits", 1.0)
    ref = c.encode_indices(x, method="numba")
    for method in ("grid", "torch"):
        np.testing.assert_array_equal(c.encode_indices(x, method=method, chunk=1000), ref)
    with pytest.raises(InvalidInputError, match="method must be"):
        c.encode_indices(x, method="faiss")
    V._GRID_CACHE.clear()
    V._GRID_SEEN.clear()
    a = c.encode_indices(x[:100])  # 100 rows x 20 segments: too few to index the codebook (brute force)
    assert V._auto_method(np.ascontiguousarray(c.codebook.numpy()), 2000) == "numba"
    b = c.encode_indices(x)[:100]  # indexes it
    np.testing.assert_array_equal(a, b)
    bad = x.clone()
    bad[1234, 3] = float("nan")
    with pytest.raises(InvalidInputError, match=r"NaN or infinite values \(row 1234\)"):
        c.encode_indices(bad, chunk=1000)
    cl, zl = _codec("logits", "logits", 4.0)
    zl = zl.clone()
    zl[2001, 0] = float("inf")
    with pytest.raises(InvalidInputError, match=r"NaN or infinite values \(row 2001\)"):
        cl.encode_indices(zl)


@pytest.mark.parametrize("method", ["auto", "grid", "numba", "torch"])
def test_encode_refuses_a_non_finite_codebook(method):
    c, x = _codec("probs", "logits", 1.0)
    c.codebook[3, 0] = float("inf")  # as a codebook rounded to f16 past 65504 would hold
    with pytest.raises(InvalidInputError, match="codebook holds NaN or infinite values"):
        c.encode_indices(x[:10], method=method)


def test_bf16_encode_centres_before_rounding():
    """bf16 keeps 8 bits: logits offset by 40 (as _codec makes them) must be centred in fp32 before they are
    rounded, not projected raw through the folded P; then the bf16 encode picks nearly the f32 codes."""
    c, z = _codec("logits", "logits", 2.0)
    cb, _ = _codec("logits", "logits", 2.0, encode_dtype="bf16")
    f32, b16 = c.encode_indices(z), cb.encode_indices(z)
    assert (f32 != b16).mean() < 0.05, (f32 != b16).mean()


def test_encode_reuses_buffers_per_thread_only():
    """The CPU encode keeps its chunk buffers for the next call on the same thread; results stay fresh arrays and
    concurrent encodes on other threads do not share them."""
    from concurrent.futures import ThreadPoolExecutor

    c, x = _codec("logits", "logits", 3.0)
    a = c.encode_indices(x, chunk=512)
    b = c.encode_indices(x[:700], chunk=512)
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(b, a[:700])
    with ThreadPoolExecutor(3) as ex:
        parts = list(ex.map(lambda s: c.encode_indices(x[s:s + 1000], chunk=512), range(0, 3000, 1000)))
    np.testing.assert_array_equal(np.concatenate(parts), a)


def test_an_index_build_blocks_only_threads_asking_for_the_same_codebook(monkeypatch):
    """While one thread builds a codebook's cell index, a lookup of another (indexed) codebook returns at once,
    and a second thread asking for the same codebook waits for that build instead of building it again."""
    import threading

    rng = np.random.default_rng(0)
    slow_cb, ready_cb = (rng.standard_normal((256, 2)).astype(np.float32) for _ in range(2))
    V._GRID_CACHE.clear()
    ready = V.cell_index(ready_cb)
    assert ready is not None  # 256 codes in 2-D: the index pays
    started, release, builds = threading.Event(), threading.Event(), []
    real_build = V._vqgrid.build_index

    def slow_build(cb, **kw):
        builds.append(cb.tobytes())
        if cb.tobytes() == slow_cb.tobytes():
            started.set()
            assert release.wait(30)
        return real_build(cb, **kw)

    monkeypatch.setattr(V._vqgrid, "build_index", slow_build)
    got = {}
    first = threading.Thread(target=lambda: got.__setitem__("first", V.cell_index(slow_cb)))
    second = threading.Thread(target=lambda: got.__setitem__("second", V.cell_index(slow_cb)))
    first.start()
    assert started.wait(30)
    second.start()
    other = threading.Thread(target=lambda: got.__setitem__("other", V.cell_index(ready_cb)))
    other.start()
    other.join(10)
    assert not other.is_alive() and got["other"] is ready  # not held up by the build in progress
    assert second.is_alive() and "first" not in got  # waiting for the one build
    release.set()
    first.join(30)
    second.join(30)
    assert got["first"] is got["second"] and builds.count(slow_cb.tobytes()) == 1


@pytest.mark.parametrize("offset,limit", [(1e3, 1e-3), (1e4, 1e-2)])
def test_folded_centring_under_a_large_common_offset(offset, limit):
    """The logit space folds the row centring into P, so a common offset of the logits is cancelled in fp32
    products: about eps * offset per latent.  Measured (this data, 60,000 indices): offset 1e3 switched
    1.8e-4 of the indices against the explicit fp32 centring, 1e4 2e-3; teacher logits sit far below that."""
    c, z = _codec("logits", "logits", 20.0)
    z = z - 40 + offset
    ref, _ = _reference_encode(c, z)
    assert (c.encode_indices(z) != ref).mean() < limit
