"""Run under torchrun by tests/test_distributed.py: encode with ``ddz encode-labels --shards``
(one shard per rank), then read the set back through a DistributedSampler and report what
each rank read, in OUT/rank<r>.json."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from codec.cli import main
from codec.softlabels import open_archive

out, argv = sys.argv[1], sys.argv[2:]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
assert main(argv) == 0
index = argv[argv.index("-o") + 1]
arch = open_archive(index)
sampler = DistributedSampler(arch, num_replicas=world, rank=rank, shuffle=True, seed=3)
ids = list(sampler)
got = torch.cat([b for b in DataLoader(arch, batch_size=64, sampler=sampler)])
mine = arch.shard_ranges()[rank]
own = open_archive(index)  # a fresh reader of this rank's own shard rows only
own_rows = own.labels(*mine)
report = {"ids": ids, "sum": got.double().sum(1).tolist(), "labels": got.tolist(),
          "own": list(mine), "own_opened": own._f().opened_shards, "own_sum": float(own_rows.double().sum())}
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump(report, fh)
dist.barrier()
dist.destroy_process_group()
