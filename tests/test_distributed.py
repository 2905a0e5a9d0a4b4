"""torchrun with 2 CPU processes (gloo): ``ddz encode-labels --shards`` trains the same VQ codec on
every rank and writes one shard per rank; the set is bitwise identical to the K = 1 run; a
DistributedSampler over the set reads like one over a single file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import codec
from codec.softlabels import open_archive

pytestmark = pytest.mark.slow  # two torchrun launches (~1 min on 2 cores); tests/test_softlabels_sets.py runs the
# same code path in-process with one rank
WORKER = Path(__file__).with_name("dist_worker.py")
ARGS = ["--dh", "16", "--dc", "4", "--k", "64", "--input", "logits", "--max-steps", "12", "--batch-size", "500"]


def torchrun(nproc: int, out: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(out), *argv]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    y = (np.random.default_rng(0).standard_normal((4000, 12)) * 3).astype(np.float32)
    np.save(tmp / "y.npy", y)
    out = {}
    for k in (1, 2):
        d = tmp / f"k{k}"
        d.mkdir()
        r = torchrun(k, d, ["encode-labels", str(tmp / "y.npy"), "-o", str(d / "labels.ddzset.json"), *ARGS, "--shards"])
        out[k] = (d, r)
    return out


def test_k2_set_is_bitwise_identical_to_k1(runs):
    (d1, _), (d2, r2) = runs[1], runs[2]
    with codec.open(d1 / "labels.ddzset.json") as a, codec.open(d2 / "labels.ddzset.json") as b:
        assert len(a.shards) == 1 and len(b.shards) == 2
        assert a.objects == b.objects and a.metadata == b.metadata
        for name in a.keys():
            np.testing.assert_array_equal(a.get(name), b.get(name))
        assert [p[1:] for p in b.info("labels/indices").pieces] == [(0, 2000), (2000, 4000)]
        assert [p[0] for p in b.info("labels/codebook").pieces] == [0]  # shared parts once, in shard 0
        b.verify()
    assert r2.stdout.count("wrote ") == 1  # progress and the summary on rank 0 only
    assert sorted(p.name for p in d2.iterdir() if p.suffix == ".ddz") == ["labels-00000-of-00002.ddz",
                                                                           "labels-00001-of-00002.ddz"]


def test_distributed_sampler_over_a_set(runs):
    d2, _ = runs[2]
    arch = open_archive(d2 / "labels.ddzset.json")
    reports = [json.loads((d2 / f"rank{r}.json").read_text()) for r in range(2)]
    seen = []
    for r, rep in enumerate(reports):
        want = arch.rows_at(rep["ids"])
        # the same rows (decoded in other batch shapes and thread counts: equal to float32 rounding)
        torch.testing.assert_close(torch.tensor(rep["labels"], dtype=torch.float32), want, rtol=1e-5, atol=1e-7)
        seen += rep["ids"]
        # its rows come from its shard; shard 0 is also opened for the shared codebook and decoder
        assert rep["own"] == [2000 * r, 2000 * (r + 1)] and rep["own_opened"] == sorted({0, r})
        assert rep["own_sum"] == pytest.approx(float(arch.labels(*rep["own"]).double().sum()))
    assert sorted(seen) == list(range(4000))  # the two ranks cover the set, as over one file
