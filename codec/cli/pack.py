"""``ddz pack`` and ``ddz unpack``: thin wrappers over :mod:`codec.video`.

    ddz pack --vae VAE_DIR --latents LATENTS.safetensors -o OUT.ddz [--hosvd-rate 0.75] [--budget 115MB]
    ddz pack --vae VAE_DIR --videos DIR -o OUT.ddz [--frames 16] [--resolution 112] ...
    ddz pack --vae quantized_vae/ --latents synthetic_data.pt --ipc 1 -o OUT.ddz     (LVDD's own outputs)
    ddz unpack FILE -o DIR [--frames mp4|png] [--preview] [--no-verify]

``VAE_DIR`` is a diffusers folder, or an optimum-quanto qint8 folder (``quantization_map.json``,
``quantized_vae.safetensors``, ``config.json``: LVDD's ``quantize_vae.py``), whose int8 weights are
stored as they are.  ``--latents`` takes LVDD's Tucker ``synthetic_data.pt``, stored without a
second decomposition (see :mod:`codec.video.lvdd`).

Heavy imports (torch, diffusers, PyAV) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def register(sub) -> None:
    p = sub.add_parser("pack", help="build a latent-video .ddz: int8 VAE + HOSVD latents + labels",
                       description="Build a latent-video .ddz from a diffusers VAE folder (or an optimum-quanto qint8 "
                                   "folder) and either latents (.safetensors with 'latents' [N,T,C,H,W] and 'labels' [N], "
                                   ".npy/.npz, or LVDD's Tucker synthetic_data.pt) or a folder of videos (one subfolder "
                                   "of clips per class).")
    p.add_argument("--vae", required=True, metavar="VAE_DIR",
                   help="diffusers model folder (config.json + diffusion_pytorch_model.safetensors), or an "
                        "optimum-quanto qint8 folder (config.json + quantized_vae.safetensors + quantization_map.json, "
                        "as LVDD's quantize_vae.py saves it), stored as it is")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--latents", metavar="FILE",
                     help=".safetensors ('latents', 'labels'), .npy or .npz of latents, or LVDD's Tucker synthetic_data.pt "
                          "(.pt, read with torch.load(weights_only=True); its cores and factors are stored as they are)")
    src.add_argument("--videos", metavar="DIR", help="folder with one subfolder of clips (videos or frame folders) per class")
    src.add_argument("--csv", metavar="FILE", help="CSV with 'path,label' columns listing clips")
    src.add_argument("--frames-file", metavar="FILE",
                     help="decoded clips as tensors: .safetensors with 'frames' [N,T,3,H,W] (float in [0,1] or uint8) "
                          "and 'labels' [N], or .npy (then --labels)")
    p.add_argument("--labels", metavar="FILE", help="labels for .npy latents: .npy of ints, or CSV with a 'label' column")
    cls = p.add_mutually_exclusive_group()
    cls.add_argument("--ipc", type=_positive_int, default=None,
                     help="synthetic_data.pt without --labels: LVDD's class order, sample i has class i // IPC")
    cls.add_argument("--num-classes", type=_positive_int, default=None,
                     help="synthetic_data.pt without --labels: class order with IPC = N / NUM_CLASSES "
                          "(default when neither is given: 50, LVDD's miniUCF101)")
    p.add_argument("--soft-labels", metavar="FILE",
                   help="per-sample soft labels [N, K] (.safetensors 'soft_labels' or .npy); a 'soft_labels' tensor "
                        "in the --latents file is used automatically")
    p.add_argument("--soft-kind", choices=("probs", "logits"), default="probs", help="what the soft labels hold")
    p.add_argument("-o", "--output", required=True, metavar="OUT.ddz")
    p.add_argument("--hosvd-rate", type=float, default=None, help="Tucker rank = int(rate * dim) on T, H, W (default 0.75)")
    p.add_argument("--chunk-size", type=_positive_int, default=None, help="samples per HOSVD chunk (default 400, as LVDD)")
    p.add_argument("--method", choices=("hosvd", "hooi"), default=None, help="Tucker fitting (default: true HOSVD)")
    p.add_argument("--storage", choices=("f32", "f16", "bf16"), default="f32", help="core/factor precision (default f32)")
    p.add_argument("--scheme", choices=("asymmetric", "symmetric"), default=None,
                   help="int8 weight quantisation (Eq. 6): asymmetric = scale + int8 zero point (default for a float "
                        "VAE); an optimum-quanto qint8 VAE keeps its own symmetric int8 values")
    p.add_argument("--decoder-only", action="store_true", help="store only the VAE decoder (enough for training)")
    p.add_argument("--vae-zstd", type=int, default=None, metavar="LEVEL", help="zstd level for the int8 weights (default raw)")
    p.add_argument("--budget", metavar="SIZE", help="refuse to write above this size: 115MB (10^6 B), 110MiB (2^20 B) or bytes")
    p.add_argument("--frames", type=_positive_int, default=16, help="frames per clip for --videos (default 16)")
    p.add_argument("--resolution", default="112", help="frame size for --videos: 112 or HxW (default 112)")
    p.add_argument("--sampling", choices=("gap", "uniform"), default="gap", help="frame sampling (default: every --frame-gap-th from 0)")
    p.add_argument("--frame-gap", type=_positive_int, default=4, help="frame gap for --sampling gap (default 4, as LVDD)")
    p.add_argument("--encode-mode", choices=("mean", "sample"), default="mean",
                   help="latents = latent_dist.mean (default) or a seeded latent_dist.sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=32, help="frames per VAE encode call")
    p.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="encode under torch.autocast")
    p.add_argument("--device", default="cpu", help="torch device for encoding (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the size report and write nothing (exit status 1 when over --budget)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or report")
    p.set_defaults(func=cmd_pack)

    u = sub.add_parser("unpack", help="latent-video .ddz -> safetensors, diffusers VAE folder, labels, videos",
                       description="Write latents/labels as .safetensors, the VAE as a diffusers folder, labels as CSV/JSON; "
                                   "optionally decode the videos (mp4 or PNG) and per-class contact sheets.")
    u.add_argument("file")
    u.add_argument("-o", "--output", required=True, metavar="DIR")
    u.add_argument("--frames", choices=("mp4", "png"), default=None, help="also decode every video to mp4 or PNG frames")
    u.add_argument("--preview", action="store_true", help="write a PNG contact sheet per class")
    u.add_argument("--fps", type=_positive_int, default=8, help="frame rate of --frames mp4 videos (default 8)")
    u.add_argument("--device", default="cpu")
    u.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="decode under torch.autocast")
    u.add_argument("--no-verify", action="store_true",
                   help="skip the checksum pass over the archive (by default every checksum is checked before anything is written)")
    u.add_argument("-q", "--quiet", action="store_true")
    u.set_defaults(func=cmd_unpack)


def _labels_from(path: str):
    import csv

    import numpy as np
    import torch

    from ..errors import InvalidInputError

    if path.lower().endswith(".npy"):
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{path}: cannot read labels ({exc})") from None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
        return torch.tensor([int(r["label"]) for r in rows], dtype=torch.int64)
    except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: labels CSV needs an integer 'label' column ({exc})") from None


def _soft_labels(args, tensors):
    """--soft-labels FILE, else a 'soft_labels' tensor of the input file, else None."""
    from ..errors import InvalidInputError
    from ..video import load_tensors

    if not args.soft_labels:
        return tensors.get("soft_labels")
    st = load_tensors(args.soft_labels)
    soft = st.get("soft_labels", st.get("latents"))  # a bare .npy loads under "latents"
    if soft is None:
        raise InvalidInputError(f"{args.soft_labels}: no 'soft_labels' tensor (found {sorted(st)})")
    return soft


def _is_lvdd_file(path: str | None) -> bool:
    return path is not None and path.lower().endswith((".pt", ".pth"))


def cmd_pack(args) -> int:
    from ..errors import InvalidInputError
    from ..video import encode_frame_tensor, load_tensors, load_vae_dir, pack_videos, parse_size, plan_latent_archive
    from ..video.io import parse_device
    from ..video.lvdd import class_order_labels, is_quanto_dir, read_lvdd_synthetic, read_quanto_vae_dir

    budget = parse_size(args.budget) if args.budget is not None else None
    device = parse_device(args.device)
    lvdd = _is_lvdd_file(args.latents)
    if lvdd:
        given = [f for f, v in (("--hosvd-rate", args.hosvd_rate), ("--chunk-size", args.chunk_size),
                                ("--method", args.method)) if v is not None]
        if given:
            raise InvalidInputError(f"{args.latents} is already decomposed (LVDD's Tucker cores and factors are stored "
                                    f"as they are); {', '.join(given)} cannot apply")
    elif args.ipc is not None or args.num_classes is not None:
        raise InvalidInputError("--ipc / --num-classes give the class order of LVDD's synthetic_data.pt; "
                                "other inputs carry their labels")
    opts = dict(hosvd_rate=0.75 if args.hosvd_rate is None else args.hosvd_rate,
                chunk_size=400 if args.chunk_size is None else args.chunk_size,
                method=args.method or "hosvd", storage=args.storage, scheme=args.scheme or "asymmetric",
                decoder_only=args.decoder_only, zstd=args.vae_zstd)
    if is_quanto_dir(args.vae):
        if args.scheme == "asymmetric":
            raise InvalidInputError(f"{args.vae} is an optimum-quanto qint8 VAE: its symmetric int8 weights are stored "
                                    "as they are, not quantised again (--scheme asymmetric cannot apply)")
        from ..video.lvdd import quanto_dequantized
        from ..video.vae import build_vae

        vcodec, vparts = read_quanto_vae_dir(args.vae, decoder_only=args.decoder_only, zstd=args.vae_zstd)
        vae = build_vae(vcodec.model, quanto_dequantized(vcodec, vparts), device=device, where=args.vae)
        opts["vae_stored"] = (vcodec, vparts)
    else:
        vae = load_vae_dir(args.vae, device=device)
    progress = not args.quiet
    if lvdd:
        if args.videos or args.csv:  # pragma: no cover - argparse keeps the sources exclusive
            raise InvalidInputError("--latents and --videos are exclusive")
        tucker = read_lvdd_synthetic(args.latents, dtype=args.storage)
        n = tucker[2][0]
        labels = (_labels_from(args.labels) if args.labels else
                  class_order_labels(n, ipc=args.ipc, num_classes=args.num_classes))
        label_source = ("--labels" if args.labels else
                        f"LVDD class order: sample i has class i // {n // (int(labels.max()) + 1)}")
        plan = plan_latent_archive(vae.cpu(), None, labels, soft_labels=_soft_labels(args, {}), soft_labels_kind=args.soft_kind,
                                   tucker_parts=tucker, progress=progress,
                                   video={"source": {"lvdd_synthetic_data": os.path.basename(args.latents),
                                                     "labels": label_source}},
                                   **opts)
        return _finish(args, plan, budget)
    if args.latents or args.frames_file:
        src = args.latents or args.frames_file
        tensors = load_tensors(src)
        if args.frames_file:
            frames = tensors.get("frames", tensors.get("latents"))  # a bare .npy loads under "latents"
            if frames is None:
                raise InvalidInputError(f"{src}: no 'frames' tensor (found {sorted(tensors)})")
            latents = encode_frame_tensor(vae, frames, batch_size=args.batch_size, mode=args.encode_mode,
                                          seed=args.seed, autocast=args.autocast, progress=progress)
        elif "latents" not in tensors:
            raise InvalidInputError(f"{src}: no 'latents' tensor (found {sorted(tensors)})")
        else:
            latents = tensors["latents"]
        if args.labels:
            labels = _labels_from(args.labels)
        elif "labels" in tensors:
            labels = tensors["labels"]
        else:
            raise InvalidInputError(f"{src}: no 'labels' tensor; add one or pass --labels")
        plan = plan_latent_archive(vae.cpu(), latents, labels, soft_labels=_soft_labels(args, tensors),
                                   soft_labels_kind=args.soft_kind,
                                   progress=progress,
                                   video={"source": {("frames_file" if args.frames_file else "latents_file"): os.path.basename(src)},
                                          **({"encode": {"mode": args.encode_mode}} if args.frames_file else {})},
                                   **opts)
        return _finish(args, plan, budget)
    else:
        if args.dry_run:
            raise InvalidInputError("--dry-run needs --latents or --frames-file (video folders are planned while packing)")
        plan = pack_videos(args.output, vae, args.videos, csv=args.csv, frames=args.frames, resolution=args.resolution,
                           sampling=args.sampling, frame_gap=args.frame_gap, encode_mode=args.encode_mode,
                           seed=args.seed, batch_size=args.batch_size, autocast=args.autocast, budget=budget,
                           progress=progress, **opts)
    if not args.quiet:
        print(plan.report(budget))
        print(f"wrote {args.output}")
    return 0


def _finish(args, plan, budget) -> int:
    """--dry-run report, or the budget check and the write."""
    if args.dry_run:
        print(plan.report(budget))
        if budget is not None and plan.size > budget:
            print(f"ddz: the planned archive is over the budget by {plan.size - budget:,} B", file=sys.stderr)
            return 1
        return 0
    if budget is not None:
        plan.check_budget(budget)
    plan.write(args.output, progress=not args.quiet)
    if not args.quiet:
        print(plan.report(budget))
        print(f"wrote {args.output}")
    return 0


def cmd_unpack(args) -> int:
    from ..loader.unpack import unpack_archive
    from ..video.io import parse_device

    parse_device(args.device)
    files = unpack_archive(args.file, args.output, frames=args.frames, preview=args.preview, fps=args.fps,
                           device=args.device, autocast=args.autocast, progress=not args.quiet,
                           verify=not args.no_verify)
    if not args.quiet:
        print(f"wrote {len(files)} files under {args.output}", file=sys.stdout)
    return 0
