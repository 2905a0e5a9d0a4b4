"""TuckerCodec (LVDD's HOSVD latents): round trips through a .ddz, error vs rank, rows, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import codec
from codec.codecs.base import codec_from_config
from codec.codecs.objects import read_object, write_object
from codec.codecs.tucker import TuckerCodec, hosvd, reconstruct, tucker_ranks
from codec.errors import InvalidInputError


def smooth_latents(n, t=8, c=4, h=6, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, c, h, w, generator=g)
    for ax in (1, 3, 4):  # smooth along T, H, W so low ranks capture most energy
        x = (x + x.roll(1, ax) + x.roll(-1, ax)) / 3
    return x


def test_paper_ranks():
    assert tucker_ranks((1200, 16, 4, 14, 14), 0.75) == [12, 4, 10, 10]  # B.4 / LVDD code
    assert tucker_ranks((5, 16, 4, 14, 14), 0.5, keep=[]) == [8, 2, 7, 7]
    assert tucker_ranks((5, 16, 4), ranks=[3, None]) == [3, 4]
    with pytest.raises(InvalidInputError):
        tucker_ranks((5, 16), 1.5)
    with pytest.raises(InvalidInputError):
        tucker_ranks((5, 16, 4), ranks=[17, 4])


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 9), chunk=st.integers(1, 5), rate=st.sampled_from([0.5, 0.75, 1.0]),
       dtype=st.sampled_from(["f32", "f16", "bf16"]), method=st.sampled_from(["hosvd", "hooi"]))
def test_roundtrip_through_ddz(tmp_path_factory, n, chunk, rate, dtype, method):
    x = smooth_latents(n, seed=n)
    c = TuckerCodec(rate=rate, chunk_size=chunk, dtype=dtype, method=method, n_iter=3)
    direct = c.decode({k: v.array for k, v in c.encode(x).items()})
    path = tmp_path_factory.mktemp("tk") / "t.ddz"
    with codec.Writer(path) as w:
        write_object(w, "lat", c, x)
    with codec.open(path) as f:
        assert codec_from_config(f.objects["lat"]["codec"]) == c
        y = read_object(f, "lat")
        assert f.info("lat/core").shape[0] == n
        assert f.info("lat/core").dtype == dtype
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.equal(y, direct)
    if rate == 1.0 and dtype == "f32":
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
    err = float((y - x).norm() / x.norm())
    assert err < {"f32": 0.6, "f16": 0.6, "bf16": 0.61}[dtype]


def test_error_decreases_with_rank():
    x = smooth_latents(20, t=10, h=8, w=8)
    errs = []
    for r in (1, 3, 5, 8, 10):
        core, f = hosvd(x, [min(r, 10), 4, min(r, 8), min(r, 8)])
        errs.append(float((reconstruct(core, f) - x).norm() / x.norm()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-5


def test_hosvd_matches_tensorly_error_and_hooi_is_no_worse():
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import tucker

    x = smooth_latents(12, t=8, h=6, w=6) + 0.3 * torch.randn(12, 8, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    ranks = [6, 4, 4, 4]
    ours = {}
    for m in ("hosvd", "hooi"):
        core, f = hosvd(x, ranks, method=m)
        ours[m] = float((reconstruct(core, f) - x).norm() / x.norm())
    xn = x.numpy().astype(np.float64)
    ref = tl.tucker_to_tensor(tucker(xn, rank=[12] + ranks, n_iter_max=0, init="svd"))
    tl_hosvd = float(np.linalg.norm(ref - xn) / np.linalg.norm(xn))
    assert abs(ours["hosvd"] - tl_hosvd) <= 1e-4 * tl_hosvd + 1e-6
    assert ours["hooi"] <= ours["hosvd"] + 1e-6


def test_decode_rows_matches_full_decode_and_factors_are_orthonormal():
    x = smooth_latents(11)
    c = TuckerCodec(chunk_size=4)
    parts = {k: v.array for k, v in c.encode(x).items()}
    full = c.decode(parts)
    facs = c.factor_parts(parts)
    assert sorted(facs) == [1, 3, 4]  # T, H, W truncated; C and the chunk axis are identity
    for f in facs.values():
        eye = f.transpose(1, 2) @ f
        torch.testing.assert_close(eye, torch.eye(f.shape[2]).expand_as(eye), atol=1e-5, rtol=0)
    ids = torch.tensor([10, 0, 5, 3])
    rows = c.decode_rows({**parts, "core": parts["core"][ids]}, rows=ids)
    torch.testing.assert_close(rows, full[ids], atol=1e-5, rtol=1e-5)
    one = c.decode_rows({**parts, "core": parts["core"][7:8]}, rows=[7])
    torch.testing.assert_close(one[0], full[7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.decode_rows(parts), full, atol=1e-5, rtol=1e-5)  # rows default to 0..n-1
    with pytest.raises(InvalidInputError):
        c.decode_rows({**parts, "core": parts["core"][:1]}, rows=[12])  # no chunk holds sample 12


def test_deterministic_encoding():
    x = smooth_latents(6)
    a = TuckerCodec(chunk_size=4).encode(x)
    b = TuckerCodec(chunk_size=4).encode(x.clone())
    assert all(torch.equal(a[k].array, b[k].array) for k in a)


@pytest.mark.parametrize("bad", [torch.randn(0, 4, 4), torch.arange(24).reshape(2, 3, 4),
                                 torch.full((2, 3, 4), float("inf")), np.zeros(3, np.float32)])
def test_bad_inputs(bad):
    with pytest.raises(InvalidInputError):
        TuckerCodec().encode(bad)


def test_bad_config_and_parts():
    for kw in ({"rate": 0}, {"dtype": "f64"}, {"method": "cp"}, {"chunk_size": 0}):
        with pytest.raises(InvalidInputError):
            TuckerCodec(**kw)
    c = TuckerCodec(chunk_size=2)
    parts = {k: v.array for k, v in c.encode(smooth_latents(5)).items()}
    with pytest.raises(InvalidInputError):
        c.decode({k: v for k, v in parts.items() if k != "core"})
    with pytest.raises(InvalidInputError):
        c.decode({**parts, "factor_1": parts["factor_1"][:1]})
    with pytest.raises(InvalidInputError):
        TuckerCodec(chunk_size=3).decode(parts)


def test_hooi_with_zero_iterations_is_hosvd():
    x = smooth_latents(6)
    ranks = [5, 4, 4, 4]
    core0, f0 = hosvd(x, ranks, method="hooi", n_iter=0)
    core1, f1 = hosvd(x, ranks, method="hosvd")
    assert torch.equal(core0, core1) and all(torch.equal(f0[k], f1[k]) for k in f1)
    c = TuckerCodec(method="hooi", n_iter=0, chunk_size=4)
    y = c.decode({k: v.array for k, v in c.encode(x).items()})
    assert y.shape == x.shape


def test_hosvd_quasi_optimality_bound():
    # De Lathauwer et al. (2000), Property 10: ||X - X_hat||^2 <= sum_k sum_{i > r_k} sigma_{k,i}^2
    x = smooth_latents(7) + 0.2 * torch.randn(7, 8, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    ranks = [3, 2, 3, 2]
    core, f = hosvd(x, ranks)
    err2 = float((reconstruct(core, f).double() - x.double()).pow(2).sum())
    bound = 0.0
    for k, r in enumerate(ranks, start=1):
        sv = torch.linalg.svdvals(x.double().movedim(k, 0).reshape(x.shape[k], -1))
        bound += float(sv[r:].pow(2).sum())
    assert err2 <= bound * (1 + 1e-6)
    assert err2 >= max(float(torch.linalg.svdvals(x.double().movedim(k, 0).reshape(x.shape[k], -1))[r:].pow(2).sum())
                       for k, r in enumerate(ranks, start=1)) * (1 - 1e-6)  # and at least the worst single mode


@pytest.mark.parametrize("ranks", [[0, 4, 4, 4], [9, 4, 4, 4], [2.5, 4, 4, 4]])
def test_hosvd_rejects_ranks_out_of_range(ranks):
    with pytest.raises(InvalidInputError):
        hosvd(smooth_latents(3), ranks)


@pytest.mark.parametrize("kw", [{"n_iter": -1}, {"n_iter": 1.5}, {"tol": "abc"}, {"tol": float("nan")}, {"ranks": 3},
                                {"ranks": ["x"]}, {"keep": ["x"]}, {"chunk_size": 2.5}, {"rate": True}])
def test_bad_config_values_are_invalid_input(kw):
    with pytest.raises(InvalidInputError):
        TuckerCodec(**kw)
    with pytest.raises(InvalidInputError):
        codec_from_config({**TuckerCodec().get_config(), **kw})


def test_decode_refuses_amplifying_factors():
    from codec.codecs.tucker import MAX_EXPANSION
    from codec.errors import LimitError

    c = TuckerCodec(chunk_size=4)
    core = torch.randn(2, 1, 4, 6, 6)
    big = torch.randn(1, 2000, 6)
    with pytest.raises(LimitError):
        c.decode({"core": core, "factor_3": big, "factor_4": big})  # 144 -> 16M elements per sample
    assert MAX_EXPANSION >= 16 * 14 * 14  # rank-1 T, H, W of an LVDD latent still decodes
    ok = c.decode({"core": torch.randn(2, 1, 4, 1, 1), "factor_1": torch.randn(1, 16, 1),
                   "factor_3": torch.randn(1, 14, 1), "factor_4": torch.randn(1, 14, 1)})
    assert ok.shape == (2, 16, 4, 14, 14)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_rows_on_cuda_matches_cpu():
    x = smooth_latents(9)
    c = TuckerCodec(chunk_size=4)
    parts = {k: v.array for k, v in c.encode(x.cuda()).items()}
    facs = {k: f.cuda() for k, f in c.factor_parts(parts).items()}
    ids = torch.tensor([8, 1, 4])
    rows = c.decode_rows(parts["core"].cuda()[ids.cuda()], facs, ids)
    assert rows.device.type == "cuda"
    cpu = TuckerCodec(chunk_size=4).decode({k: v.cpu() for k, v in parts.items()})
    torch.testing.assert_close(rows.cpu(), cpu[ids], atol=1e-4, rtol=1e-4)
