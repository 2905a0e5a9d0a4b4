"""Run under torchrun by bench_sets.py: train a VQ codec and encode a memmap of logits into a set,
one shard per rank; rank 0 writes ``{"seconds": s, "rows": n}`` (both phases, after a barrier) to OUT."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch.distributed as dist

from codec.softlabels import save_softlabels_distributed, train_vq

src, index, out = sys.argv[1:4]
dist.init_process_group("gloo")
y = np.load(src, mmap_mode="r")
dist.barrier()
t0 = time.perf_counter()
vq = train_vq(y, dh=64, dc=4, k=256, input="logits", max_steps=40, batch_size=4096, progress=False, distributed=True)
t1 = time.perf_counter()
save_softlabels_distributed(index, vq, y)
dist.barrier()
t2 = time.perf_counter()
if dist.get_rank() == 0:
    with open(out, "w") as fh:
        json.dump({"train_s": t1 - t0, "encode_s": t2 - t1, "rows": int(y.shape[0])}, fh)
dist.destroy_process_group()
