"""Bit-packing speed (codec.pack_bits / codec.unpack_bits), as ratios to a copy measured in the same run.

For bits in 6, 7, 10, 11, 16 and N = 50,000,000 uniform random indices:

- numba path (numpy arrays): pack of the smallest-unsigned-dtype values into a preallocated
  stream, and unpack of the whole stream into a preallocated array of that dtype;
- reference: ``np.copyto`` of an array of the unpacked side (N values of that dtype: uint8 for
  bits <= 8, uint16 above) and of an array the size of the packed stream;
- torch path (``pack_bits_torch`` / ``unpack_bits_torch``: plain tensor ops, the implementation
  used for non-CPU tensors) on CPU int64 tensors with preallocated outputs, beside
  ``Tensor.copy_`` of an int64 tensor of N values;
- the same torch path on the GPU beside a device-to-device copy, when ``torch.cuda.is_available()``.

Floors (issue 2): numba pack and unpack at bits=10 >= 1.5 G idx/s and >= 25 % of the copy of the
uint16 side; torch path on CPU >= 0.2 G idx/s.

Run: ``pytest benches/bench_bits.py --benchmark-only`` (about 2-3 minutes on 2 cores); a table of
G idx/s and ratios is printed at the end. ``DDZ_BENCH_BITS_N`` overrides N.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from codec.bits import pack_bits, pack_bits_torch, unpack_bits, unpack_bits_torch

N = int(os.environ.get("DDZ_BENCH_BITS_N", 50_000_000))
BITS = [6, 7, 10, 11, 16]
TABLE = f"bit packing, N={N:,} indices (medians; x copy = copy time / op time, copy measured in this run)"
ROUNDS = dict(rounds=7, iterations=1, warmup_rounds=1)
SLOW_ROUNDS = dict(rounds=3, iterations=1, warmup_rounds=1)


def _dtype(bits):
    return np.uint8 if bits <= 8 else np.uint16


@pytest.fixture(scope="module", params=BITS, ids=[f"b{b}" for b in BITS])
def data(request):
    bits = request.param
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 1 << bits, N, dtype=_dtype(bits))
    packed = pack_bits(values, bits)
    out_values = np.zeros_like(values)
    out_packed = np.zeros_like(packed)
    return bits, values, packed, out_values, out_packed


@pytest.fixture(scope="module")
def torch_data(data):
    bits, values, packed, _, _ = data
    tv = torch.from_numpy(values.astype(np.int64))
    tp = torch.from_numpy(packed.copy())
    return bits, tv, tp, torch.zeros_like(tv), torch.zeros_like(tp)


def _record(bench_table, benchmark, bits, what, refs=None):
    """refs: (name of the copy of the unpacked side, name of the copy of the same output size)."""
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(bits=bits, n=N, g_idx_per_s=N / med / 1e9)
    bench_table.set_finalizer(TABLE, _finalize)
    bench_table.add(TABLE, {"bits": bits, "what": what, "median ms": med * 1e3, "G idx/s": N / med / 1e9, "_refs": refs, "_s": med})


def _finalize(rows):
    times = {(r["bits"], r["what"]): r["_s"] for r in rows}
    out = []
    for r in rows:
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        refs = r["_refs"] or ("", "")
        for col, name in zip(("x copy of unpacked side", "x copy of output size"), refs):
            t = times.get((r["bits"], name))
            row[col] = t / r["_s"] if t else ""
        out.append(row)
    return out




# --------------------------------------------------------------------------- references


def test_copyto_values(benchmark, bench_table, data):
    bits, values, _, out_values, _ = data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(np.copyto, args=(out_values, values), **ROUNDS)
    _record(bench_table, benchmark, bits, f"np.copyto {values.dtype.name}[N]")


def test_copyto_packed(benchmark, bench_table, data):
    bits, _, packed, _, out_packed = data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(np.copyto, args=(out_packed, packed), **ROUNDS)
    _record(bench_table, benchmark, bits, "np.copyto packed")


# --------------------------------------------------------------------------- numba path


def test_pack_numba(benchmark, bench_table, data):
    bits, values, packed, _, out_packed = data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(pack_bits, args=(values, bits), kwargs={"out": out_packed}, **ROUNDS)
    assert np.array_equal(out_packed, packed)
    _record(bench_table, benchmark, bits, "pack numba", (f"np.copyto {values.dtype.name}[N]", "np.copyto packed"))


def test_unpack_numba(benchmark, bench_table, data):
    bits, values, packed, out_values, _ = data
    benchmark.group = f"bits={bits}"
    out_values[:] = 0
    benchmark.pedantic(unpack_bits, args=(packed, bits, N), kwargs={"out": out_values}, **ROUNDS)
    assert np.array_equal(out_values, values)
    _record(bench_table, benchmark, bits, "unpack numba", (f"np.copyto {values.dtype.name}[N]",) * 2)


# --------------------------------------------------------------------------- torch path, CPU


def test_copy_torch_int64(benchmark, bench_table, torch_data):
    bits, tv, _, tout, _ = torch_data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(tout.copy_, args=(tv,), **SLOW_ROUNDS)
    _record(bench_table, benchmark, bits, "torch copy_ int64[N]")


def test_pack_torch_cpu(benchmark, bench_table, torch_data):
    bits, tv, tp, _, tpout = torch_data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(pack_bits_torch, args=(tv, bits), kwargs={"out": tpout}, **SLOW_ROUNDS)
    assert torch.equal(tpout, tp)
    _record(bench_table, benchmark, bits, "pack torch-ops cpu", ("torch copy_ int64[N]", ""))


def test_unpack_torch_cpu(benchmark, bench_table, torch_data):
    bits, tv, tp, tout, _ = torch_data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(unpack_bits_torch, args=(tp, bits, N), kwargs={"out": tout}, **SLOW_ROUNDS)
    assert torch.equal(tout, tv)
    _record(bench_table, benchmark, bits, "unpack torch-ops cpu", ("torch copy_ int64[N]",) * 2)


def test_unpack_torch_tensor_dispatch(benchmark, bench_table, torch_data):
    """codec.unpack_bits on a CPU tensor: the numba kernels, zero-copy, int64 result."""
    bits, tv, tp, tout, _ = torch_data
    if bits != 10:
        pytest.skip("one width is enough for the dispatch overhead")
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(unpack_bits, args=(tp, bits, N), kwargs={"out": tout}, **ROUNDS)
    assert torch.equal(tout, tv)
    _record(bench_table, benchmark, bits, "unpack_bits(cpu tensor) numba", ("torch copy_ int64[N]",) * 2)


# --------------------------------------------------------------------------- torch path, GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def cuda_data(torch_data):
    bits, tv, tp, _, _ = torch_data
    dv, dp = tv.cuda(), tp.cuda()
    return bits, dv, dp, torch.zeros_like(dv), torch.zeros_like(dp)


def _synced(fn):
    def run(*a, **k):
        r = fn(*a, **k)
        torch.cuda.synchronize()
        return r

    return run


@cuda
def test_copy_cuda_int64(benchmark, bench_table, cuda_data):
    bits, dv, _, dout, _ = cuda_data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(_synced(dout.copy_), args=(dv,), **ROUNDS)
    _record(bench_table, benchmark, bits, "cuda copy_ int64[N]")


@cuda
def test_pack_torch_cuda(benchmark, bench_table, cuda_data):
    bits, dv, dp, _, dpout = cuda_data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(_synced(pack_bits), args=(dv, bits), kwargs={"out": dpout}, **ROUNDS)
    assert torch.equal(dpout, dp)
    _record(bench_table, benchmark, bits, "pack torch-ops cuda", ("cuda copy_ int64[N]", ""))


@cuda
def test_unpack_torch_cuda(benchmark, bench_table, cuda_data):
    bits, dv, dp, dout, _ = cuda_data
    benchmark.group = f"bits={bits}"
    benchmark.pedantic(_synced(unpack_bits), args=(dp, bits, N), kwargs={"out": dout}, **ROUNDS)
    assert torch.equal(dout, dv)
    _record(bench_table, benchmark, bits, "unpack torch-ops cuda", ("cuda copy_ int64[N]",) * 2)
