"""``ddz encode-labels``: train a VQ codec on soft labels and encode them into a .ddz or a sharded set.

    ddz encode-labels LABELS.npy -o OUT.ddz --dh 64 --dc 4 --k 256 [--input logits] [--epochs 1]
    ddz encode-labels LABELS.npy -o OUT.ddzset.json --dh 64 --dc 4 --k 256 --shards 4
    torchrun --nproc_per_node 2 -m codec.cli encode-labels LABELS.npy -o OUT.ddzset.json --dh 64 --dc 4 --k 256 --shards

Under torchrun every rank trains the same codec (statistics summed across ranks, see
:mod:`codec.softlabels.train`), encodes its share of the rows and writes its shard; rank 0
writes the index and shows progress.  Heavy imports happen inside the handler.
"""

from __future__ import annotations

import os
import sys


def register(sub) -> None:
    p = sub.add_parser("encode-labels", help="train a VQ codec on soft labels and encode them (.ddz or sharded set)",
                       description="Soft labels (rows x classes) from a .npy (memory-mapped) or a .ddz section, "
                                   "VQ-compressed (paper Eq. 2-9) into one .ddz or, with --shards, a sharded set "
                                   "(spec/sets.md); under torchrun one shard per rank.")
    p.add_argument("input", metavar="LABELS", help=".npy of float soft labels (rows, classes), or a .ddz with --section")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .ddz, or the set index (STEM.ddzset.json)")
    p.add_argument("--section", help="section of an input .ddz holding the labels")
    p.add_argument("--dh", type=int, required=True, help="latent width dh (Eq. 2)")
    p.add_argument("--dc", type=int, required=True, help="segment width dc (Eq. 3)")
    p.add_argument("--k", type=int, required=True, help="codebook size k (Eq. 4)")
    p.add_argument("--input", dest="kind", choices=("probs", "logits"), default="probs", help="what the rows hold")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature for --input logits")
    p.add_argument("--epochs", type=int, default=1, help="training passes over the labels (default 1)")
    p.add_argument("--max-steps", type=int, default=None, help="stop training after this many batches")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--entropy", action="store_true", help="entropy-code the indices (zstd byte planes)")
    p.add_argument("--shards", nargs="?", type=int, const=0, default=None, metavar="N",
                   help="write a sharded set: N shards (default under torchrun: one per rank)")
    p.add_argument("--device", default=None, help="torch device (default: cpu; under torchrun with NCCL, the local GPU)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_encode_labels)


def _data(args):
    import numpy as np

    from ..errors import InvalidInputError

    if args.section is not None:
        return args.input
    try:
        return np.load(args.input, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{args.input}: cannot read a .npy of soft labels ({exc})") from None


def cmd_encode_labels(args) -> int:
    import torch
    import torch.distributed as dist

    from ..errors import InvalidInputError
    from ..softlabels import save_softlabel_set, save_softlabels, save_softlabels_distributed, train_vq

    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = args.device
    owned = False
    if launched:
        if args.shards is None:
            raise InvalidInputError("under torchrun, pass --shards (each rank writes one shard)")
        if not dist.is_initialized():
            owned = True
            nccl = torch.cuda.is_available() and device != "cpu"
            if nccl:
                local = int(os.environ.get("LOCAL_RANK", 0))
                torch.cuda.set_device(local)
                device = device or f"cuda:{local}"
            dist.init_process_group("nccl" if nccl else "gloo")
        world = dist.get_world_size()
        if args.shards not in (0, world):
            raise InvalidInputError(f"--shards {args.shards} under torchrun with {world} ranks: one shard per rank")
    rank0 = not launched or dist.get_rank() == 0
    progress = not args.quiet and rank0
    try:
        data = _data(args)
        codec = train_vq(data, section=args.section, dh=args.dh, dc=args.dc, k=args.k, input=args.kind,
                         temperature=args.temperature, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, seed=args.seed, entropy=args.entropy, device=device,
                         progress=progress, distributed=launched)
        if launched:
            out = save_softlabels_distributed(args.output, codec, data, section=args.section, progress=progress)
        elif args.shards is not None:
            out = save_softlabel_set(args.output, codec, data, shards=args.shards or 1, section=args.section,
                                     progress=progress)
        else:
            out = save_softlabels(args.output, codec, data, section=args.section, progress=progress)
    finally:
        if owned:
            dist.destroy_process_group()
    if progress:
        print(f"wrote {out}", file=sys.stdout)
    return 0
