"""Container speed, as ratios to a reference measured in the same run.

- ``codec.open`` + first tensor (read into memory, and with ``zero_copy=True`` a view of the mapping) vs
  ``safetensors.safe_open`` + first tensor on the same tensors, at 1 MB and 1 GB (floor: open time independent of
  file size, and no slower than 2x safetensors);
- ``DDZFile.verify`` (every CRC-32 and structural check) vs a plain read-only scan of the same mapped bytes
  (floor: verify at 1 GB/s or better).

Run: ``pytest benches/bench_container.py --benchmark-only``; set DDZ_BENCH_BIG=0 to skip the 1 GB case.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import codec

SIZES = {"1MB": 1 << 20, "1GB": 1 << 30}
if os.environ.get("DDZ_BENCH_BIG", "1") == "0":
    SIZES.pop("1GB")


@pytest.fixture(scope="module", params=list(SIZES))
def files(request, tmp_path_factory):
    nbytes = SIZES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    rng = np.random.default_rng(0)
    # eight tensors sharing the size, like a small model or dataset
    tensors = {f"t{i}": rng.standard_normal(nbytes // 32, dtype=np.float32) for i in range(8)}
    ddz, st = folder / "x.ddz", folder / "x.safetensors"
    codec.save_file(tensors, ddz)
    safetensors.numpy.save_file(tensors, str(st))
    del tensors
    return request.param, ddz, st


def _first_ddz(path, zero_copy=False):
    with codec.open(path, zero_copy=zero_copy) as f:
        return float(f.get("t0")[0])


def _first_st(path):
    with safe_open(str(path), framework="numpy") as f:
        return float(f.get_tensor("t0")[0])


def test_open_first_tensor_ddz(benchmark, files):
    size, ddz, _ = files
    benchmark.group = f"open+first tensor {size}"
    benchmark.extra_info["file_bytes"] = ddz.stat().st_size
    assert benchmark(_first_ddz, ddz) == _first_st(files[2])


def test_open_first_tensor_ddz_zero_copy(benchmark, files):
    """The same read as a view of the file mapping (``zero_copy=True``): no copy, no SIGBUS safety."""
    size, ddz, _ = files
    benchmark.group = f"open+first tensor {size}"
    assert benchmark(_first_ddz, ddz, True) == _first_st(files[2])


def test_open_first_tensor_safetensors(benchmark, files):
    size, _, st = files
    benchmark.group = f"open+first tensor {size}"
    benchmark(_first_st, st)


def _verify(path):
    with codec.open(path) as f:
        f.verify()


def _scan(path):
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        n = len(mm) // 8
        return int(np.frombuffer(mm, np.uint64, n).sum())


def test_verify(benchmark, files):
    size, ddz, _ = files
    benchmark.group = f"verify {size}"
    nbytes = ddz.stat().st_size
    benchmark.extra_info["file_bytes"] = nbytes
    benchmark(_verify, ddz)
    benchmark.extra_info["GB_per_s"] = nbytes / benchmark.stats.stats.median / 1e9


def test_scan_reference(benchmark, files):
    size, ddz, _ = files
    benchmark.group = f"verify {size}"
    benchmark(_scan, ddz)
