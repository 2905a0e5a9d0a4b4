"""Sets, distributed encode and remote reads, as ratios measured in the same run.

- encode throughput (VQ training + encoding into a set) under torchrun with K = 1 and K = 2 CPU ranks
  (gloo, one thread per rank): rows/s and the K = 2 / K = 1 scaling ratio;
- read throughput of a 4-shard set vs one file holding the same rows (decode every row in 4,096-row batches);
- remote (HTTP range requests to a server on 127.0.0.1) open + first row vs downloading the whole file and
  reading it locally: latency, and bytes fetched from the server; over plain loopback and over an emulated
  wide-area link (20 ms per request, 100 Mbit/s).

Run: ``pytest benches/bench_sets.py --benchmark-only -q -p no:cacheprovider`` (tables at the end).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rangeserver import RangeServer

from codec.softlabels import open_archive, save_softlabel_set, save_softlabels, train_vq

ROWS, C = int(os.environ.get("DDZ_BENCH_SET_ROWS", 200_000)), 100
WORKER = Path(__file__).with_name("dist_encode_worker.py")


@pytest.fixture(scope="module")
def logits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1000, C)).astype(np.float32) * 3
    y = base[rng.integers(0, 1000, ROWS)] + rng.standard_normal((ROWS, C)).astype(np.float32)
    np.save(tmp / "y.npy", y)
    return tmp, y


@pytest.fixture(scope="module")
def files(logits):
    tmp, y = logits
    vq = train_vq(y, dh=64, dc=4, k=256, input="logits", max_steps=20, batch_size=4096, progress=False)
    save_softlabels(tmp / "one.ddz", vq, y)
    save_softlabel_set(tmp / "four.ddzset.json", vq, y, shards=4)
    return tmp


@pytest.mark.parametrize("ranks", [1, 2])
def test_distributed_encode(benchmark, bench_table, logits, ranks):
    tmp, _ = logits
    out = tmp / f"enc{ranks}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", str(WORKER),
           str(tmp / "y.npy"), str(tmp / f"enc{ranks}.ddzset.json"), str(out)]

    def run():
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=900)

    benchmark.group = "distributed encode"
    benchmark.pedantic(run, rounds=1, iterations=1)
    r = json.loads(out.read_text())
    row = {"ranks": ranks, "rows": r["rows"], "train s": r["train_s"], "encode s": r["encode_s"],
           "rows/s (train+encode)": r["rows"] / (r["train_s"] + r["encode_s"]),
           "rows/s (encode)": r["rows"] / r["encode_s"]}
    benchmark.extra_info.update(row)
    bench_table.add("distributed encode (K ranks, gloo, 1 thread each)", row)

    def ratios(rows):
        base = next((x for x in rows if x["ranks"] == 1), None)
        for x in rows:
            if base:
                x["scaling (train+encode)"] = x["rows/s (train+encode)"] / base["rows/s (train+encode)"]
                x["scaling (encode)"] = x["rows/s (encode)"] / base["rows/s (encode)"]
        return rows

    bench_table.set_finalizer("distributed encode (K ranks, gloo, 1 thread each)", ratios)


def _read_all(path):
    arch = open_archive(path)
    total = 0.0
    for s in range(0, len(arch), 4096):
        total += float(arch.labels(s, min(len(arch), s + 4096))[:, 0].sum())
    arch.close()
    return total


@pytest.mark.parametrize("kind", ["one file", "4-shard set"])
def test_read_throughput(benchmark, bench_table, files, kind):
    path = files / ("one.ddz" if kind == "one file" else "four.ddzset.json")
    benchmark.group = "read every row"
    benchmark.pedantic(_read_all, args=(path,), rounds=3, iterations=1, warmup_rounds=1)
    rate = ROWS / benchmark.stats.stats.median
    bench_table.add("read every row (4,096-row batches)", {"source": kind, "rows/s": rate})

    def ratios(rows):
        base = next((x for x in rows if x["source"] == "one file"), None)
        for x in rows:
            if base:
                x["x one file"] = x["rows/s"] / base["rows/s"]
        return rows

    bench_table.set_finalizer("read every row (4,096-row batches)", ratios)


LINKS = {"loopback": {}, "20 ms, 100 Mbit/s": {"rtt": 0.02, "rate": 12.5e6}}


@pytest.mark.parametrize("link", list(LINKS))
@pytest.mark.parametrize("how", ["ranged reads", "download whole file"])
def test_remote_first_row(benchmark, bench_table, files, how, link):
    with RangeServer(files, **LINKS[link]) as srv:
        url = f"{srv.url}/one.ddz"

        def ranged():
            arch = open_archive(url)
            return arch.labels(0, 1)

        def download():
            dst = files / "downloaded.ddz"
            with urllib.request.urlopen(url) as r:
                dst.write_bytes(r.read())
            return open_archive(dst).labels(0, 1)

        fn = ranged if how == "ranged reads" else download
        fn()  # warm (fsspec's session, the OS page cache)
        srv.reset()
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
        fetched = srv.bytes_served
        benchmark.group = f"remote first row, {link}"
        benchmark.pedantic(fn, rounds=5, iterations=1)
    size = (files / "one.ddz").stat().st_size
    row = {"link": link, "how": how, "latency ms (median)": 1e3 * benchmark.stats.stats.median, "first call ms": 1e3 * once,
           "bytes fetched": fetched, "file bytes": size}
    benchmark.extra_info.update(row)
    bench_table.add("remote open + first row (HTTP on 127.0.0.1)", row)

    def ratios(rows):
        for x in rows:
            base = next((b for b in rows if b["how"] == "download whole file" and b["link"] == x["link"]), None)
            if base:
                x["latency x download"] = x["latency ms (median)"] / base["latency ms (median)"]
                x["bytes x download"] = x["bytes fetched"] / base["bytes fetched"]
        return rows

    bench_table.set_finalizer("remote open + first row (HTTP on 127.0.0.1)", ratios)
