"""Build a MiniUCF-shaped archive as in the LVDD paper's B.4 and print its budget report.

    python tools/miniucf.py [-o miniucf.ddz] [--budget 115MB] [--vae-dir DIR]

Shape of the paper's MiniUCF IPC 1 setting: 50 classes x 24 selected clips (N = 1200),
2D-VAE latents [16, 4, 14, 14] (16 frames at 112x112 through SD-VAE-FT-MSE), HOSVD with
compression rate 0.75 on chunks of 400 (ranks [n, 12, 4, 10, 10]), and the SD-VAE-FT-MSE
autoencoder quantised to int8 (Eq. 6). The paper reports 27 MB of tensors + 80 MB of VAE
= 107 MB, inside the 115 MB budget.

What is synthetic here (no downloads are possible or wanted): the VAE has the
SD-VAE-FT-MSE *config* with random-init weights (pass ``--vae-dir`` with the real
diffusers folder to use real weights; the size is identical), and the latents are
synthetic smooth tensors (seeded Gaussian noise smoothed along T, H, W, scaled like SD
latents), not encoded MiniUCF clips. Sizes depend only on shapes, so the byte counts are
those of the real setting.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("codec") is None and os.path.isdir(os.path.join(_ROOT, "codec")):
    sys.path.insert(0, _ROOT)


def synthetic_latents(n: int, shape=(16, 4, 14, 14), seed: int = 0):
    """Seeded smooth latents ``[n, T, C, H, W]``: noise smoothed along T, H, W (SD-latent-like scale ~5)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    for ax, passes in ((1, 3), (3, 1), (4, 1)):
        for _ in range(passes):
            x = (x + x.roll(1, ax) + x.roll(-1, ax)) / 3
    x = x / x.std() * 5.0
    return x + 0.05 * torch.randn(x.shape, generator=g)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default="miniucf.ddz")
    ap.add_argument("--budget", default="115MB", help="the paper's MiniUCF IPC 1 budget (default 115MB)")
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--per-class", type=int, default=24)
    ap.add_argument("--hosvd-rate", type=float, default=0.75)
    ap.add_argument("--storage", choices=("f32", "f16", "bf16"), default="f32")
    ap.add_argument("--decoder-only", action="store_true")
    ap.add_argument("--vae-dir", help="a real SD-VAE-FT-MSE diffusers folder (default: its config, random weights)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    import torch

    from codec.video import SD_VAE_FT_MSE_CONFIG, load_vae_dir, pack_latents, vae_from_config

    vae = load_vae_dir(args.vae_dir) if args.vae_dir else vae_from_config(SD_VAE_FT_MSE_CONFIG, seed=0)
    n = args.classes * args.per_class
    latents = synthetic_latents(n)
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    plan = pack_latents(args.output, vae, latents, labels, class_names=[f"class_{i:02d}" for i in range(args.classes)],
                        hosvd_rate=args.hosvd_rate, storage=args.storage, decoder_only=args.decoder_only,
                        budget=args.budget, metadata={"ddz.example": {
                            "name": "MiniUCF-shaped (LVDD B.4, IPC 1)",
                            "synthetic": "random-init SD-VAE-FT-MSE config weights; seeded smooth latents"}})
    from codec.video import parse_size

    print(f"MiniUCF-shaped archive: {args.classes} classes x {args.per_class} clips, latents [16, 4, 14, 14], "
          f"HOSVD rate {args.hosvd_rate}, int8 SD-VAE-FT-MSE{' decoder' if args.decoder_only else ''}")
    print(plan.report(budget=parse_size(args.budget)))
    print(f"file on disk: {os.path.getsize(args.output):,} B  ({args.output})")
    print(f"\n$ ddz budget {args.output}")
    from codec.cli import main as ddz_main

    rc = ddz_main(["budget", args.output])  # the accountant's byte-exact attribution of the written file
    if rc != 0:
        print(f"ddz budget failed (exit status {rc})", file=sys.stderr)
        return rc
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
