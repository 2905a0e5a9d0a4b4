"""Packing throughput (HOSVD + int8 VAE + exact plan + atomic write), as ratios measured in the same run.

Input: MiniUCF-shaped latents (1200, 16, 4, 14, 14) fp32 (60.2 MB) and a VAE; two VAEs:
"small" (AutoencoderKL [64, 128, 128]) always, and the SD-VAE-FT-MSE config when
``DDZ_BENCH_SD=1``.

- reference: ``safetensors.torch.save_file`` of the raw latents + labels + fp32 VAE state
  dict (what people ship today), to the same folder;
- ddz: :func:`codec.video.pack_latents` (Tucker rate 0.75, chunks of 400, int8 VAE), on the CPU;
  with the latents and VAE on CUDA too when available.

Reported: median seconds, MB/s of input latents, output size, ratio to the reference time.
Run: ``pytest benches/bench_pack.py --benchmark-only``.
"""

from __future__ import annotations

import os

import pytest
import torch

from codec.video import SD_VAE_FT_MSE_CONFIG, pack_latents, tiny_vae_config, vae_from_config

VAES = {"small": dict(tiny_vae_config(blocks=(64, 128, 128), groups=32), layers_per_block=2)}
if os.environ.get("DDZ_BENCH_SD") == "1":
    VAES["sd"] = SD_VAE_FT_MSE_CONFIG
N = 1200
TABLE = f"pack {N} latents [16, 4, 14, 14] + VAE (median of rounds)"
ROUNDS = dict(rounds=3, iterations=1, warmup_rounds=1)
_T: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", params=list(VAES))
def inputs(request):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 16, 4, 14, 14, generator=g)
    for ax in (1, 3, 4):
        x = (x + x.roll(1, ax) + x.roll(-1, ax)) / 3
    y = torch.arange(N) % 50
    return request.param, vae_from_config(VAES[request.param], seed=0), x, y


def _rec(bench_table, benchmark, name, what, path, nbytes_in):
    med = benchmark.stats.stats.median
    _T[(name, what)] = med
    _table(bench_table, {"vae": name, "what": what, "median s": med, "latent MB/s": nbytes_in / med / 1e6,
                        "output MB": os.path.getsize(path) / 1e6})


def _fin(rows):
    for r in rows:
        t = _T.get((r["vae"], "safetensors.save_file raw fp32"))
        r["time ratio vs safetensors"] = r["median s"] / t if t else ""
    return rows


def _table(bench_table, row):
    """Add a row to this file's summary table (benches/conftest.py's ``bench_table`` fixture)."""
    bench_table.set_finalizer(TABLE, _fin)
    bench_table.add(TABLE, row)


def test_safetensors_raw(benchmark, bench_table, inputs, tmp_path):
    from safetensors.torch import save_file

    name, vae, x, y = inputs
    path = tmp_path / "raw.safetensors"
    tensors = {"latents": x, "labels": y, **{f"vae.{k}": v.contiguous() for k, v in vae.state_dict().items()}}
    benchmark.group = f"pack {name}"
    benchmark.pedantic(save_file, args=(tensors, path), **ROUNDS)
    _rec(bench_table, benchmark, name, "safetensors.save_file raw fp32", path, x.numel() * 4)


def test_pack_cpu(benchmark, bench_table, inputs, tmp_path):
    name, vae, x, y = inputs
    path = tmp_path / "p.ddz"
    benchmark.group = f"pack {name}"
    benchmark.pedantic(pack_latents, args=(path, vae, x, y), kwargs={"progress": False}, **ROUNDS)
    _rec(bench_table, benchmark, name, "ddz pack_latents (cpu)", path, x.numel() * 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_pack_cuda(benchmark, bench_table, inputs, tmp_path):
    name, vae, x, y = inputs
    vc, xc = vae.cuda(), x.cuda()
    path = tmp_path / "g.ddz"
    benchmark.group = f"pack {name}"
    benchmark.pedantic(pack_latents, args=(path, vc, xc, y), kwargs={"progress": False}, **ROUNDS)
    _rec(bench_table, benchmark, name, "ddz pack_latents (cuda)", path, x.numel() * 4)
