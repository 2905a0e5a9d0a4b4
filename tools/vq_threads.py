#!/usr/bin/env python
"""How much VQ-decoded soft labels depend on torch's CPU thread count.

VQ decoding (Eq. 5, 6, 9) is one fp32 ``torch.mm`` per batch; on CPU that is MKL's sgemm,
whose summation order may change with the number of threads.  A DataLoader worker runs one
thread, the main process several, so this is the difference between ``num_workers=0`` and
``num_workers>0``.  For each shape the same random index batches are decoded with 1 thread and
with 2, 4, 8 and 16 threads (the machine need not have that many cores), and the largest
difference in a probability and the share of entries that differ are printed.

Run:  python tools/vq_threads.py [--batches 50]
"""

from __future__ import annotations

import argparse

import torch

from codec.codecs.vq import VQCodec

SHAPES = [(100, 64, 4, 256, 32), (100, 64, 4, 256, 256), (1000, 795, 5, 1024, 64), (1000, 1000, 25, 512, 256),
          (10, 30, 3, 64, 64)]  # (C, dh, dc, k, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=50)
    args = ap.parse_args()
    before = torch.get_num_threads()
    try:
        for C, dh, dc, k, B in SHAPES:
            g = torch.Generator().manual_seed(0)
            vq = VQCodec(C, dh, dc, k)
            vq.set_params(encoder=torch.randn(C, dh, generator=g), decoder=torch.randn(dh, C, generator=g) * 0.05,
                          codebook=torch.randn(k, dc, generator=g))
            worst, ndiff, nel = 0.0, 0, 0
            for b in range(args.batches):
                idx = torch.randint(0, k, (B, dh // dc), generator=torch.Generator().manual_seed(b))
                torch.set_num_threads(1)
                ref = vq.decode_indices(idx)
                for t in (2, 4, 8, 16):
                    torch.set_num_threads(t)
                    d = (vq.decode_indices(idx) - ref).abs()
                    worst, ndiff, nel = max(worst, float(d.max())), ndiff + int((d > 0).sum()), nel + d.numel()
            print(f"C={C} dh={dh} dc={dc} k={k} batch={B}: max |p(1 thread) - p(2..16 threads)| = {worst:.3g}, "
                  f"entries differing {ndiff:,} / {nel:,} ({100 * ndiff / nel:.2f} %)")
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    main()
