#!/usr/bin/env python
"""Student accuracy at matched label bytes (the soft-label paper's Table 3 / Table S9 metric).

A miniature of the paper's ImageNet-1K setting that runs on 2 CPU cores with nothing downloaded:

* **Data**: 1,000 classes, one per distinct glyph of the DejaVu (Sans, Sans Mono, Serif x regular,
  bold, oblique, bold oblique) and STIX fonts inside matplotlib's wheel, rendered at 24x24 with
  Pillow (random size, offset and rotation per rendering).  Glyphs whose renderings are
  pixel-identical in most fonts (Latin A / Greek Alpha / Cyrillic A ...) are one class.  Fonts
  are split: a teacher trains on the *train* fonts, choices are made on the *validation* fonts,
  and accuracy is reported on the *test* fonts (font styles never seen with that family).
* **Teacher**: a small CNN trained here on the training renderings (hard labels).
* **Distilled set** (SRe2L / LPLD setting): IPC images per class from the training renderings;
  E epochs of RandomResizedCrop views, one batch per step, recorded with the library's
  augmentation records; the teacher's logits of every view (T = 20, as SRe2L / LPLD replay them).
* **Codecs at matched stored bytes**: for each target ratio over S11 (10x, 40x, 100x) every codec
  takes the most expressive setting whose stored bytes (``codec.budget``: the S12/S15-S17
  stored terms, the LPLD pool; VQ through ``codec.budget.solve``) reach the ratio; the archive
  is written by ``write_replay_archive`` and its label bytes measured from the file
  (``codec.budget.attribute``).  Full fp16 logits (LPLD ratio 1) are the reference.
* **Students**: the same CNN, trained from the archive through ``replay_loader`` (LPLD:
  ``LPLDBatchSampler``, its batches drawn with replacement from the stored pool) with
  ``kd_loss`` at tau = T; top-1 accuracy on the test fonts, and the fraction of the full-label
  student's accuracy kept.  Eq. 9's epsilon (every codec) and top-k's missing-mass rule are
  chosen by KL on labels of the *validation* fonts' views, never on the test set.

Run:  ``python tools/fidelity.py [--seeds N] [--json out.json]``;  ``--quick`` is a smoke run
(50 classes, tiny epochs) used by the tests.  ``--validate`` trains the students on the same
archives but scores them on the validation fonts (the split the VQ options were chosen on).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from codec.budget import attribute, formulas as BF, solve
from codec.errors import BudgetError
from codec.softlabels import LPLDCodec, PCACodec, QuantCodec, TopKCodec, fit, kd_loss, kl_div, train_vq
from codec.softlabels.augment import BatchRecord, write_replay_archive
from codec.softlabels.replay import (LPLDBatchSampler, ReplayArchive, ReplayCollate, ReplayDataset, apply_crop_flip,
                                     replay_loader)

EPS_GRID = (1e-8, 1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)  # Eq. 9 epsilon, chosen per codec on validation labels
RATIOS = (40, 100, 10)  # in the order they are run (the paper's Table 3 ratios first)
CODECS = ("vq", "topk", "pca", "quant", "lpld")  # compared against "full fp16", which always runs

# ----------------------------------------------------------------------------------------------
# the glyph set
# ----------------------------------------------------------------------------------------------
FAMILIES = ("DejaVuSans", "DejaVuSansMono", "DejaVuSerif")
TEST_FONTS = ("DejaVuSans-BoldOblique.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono-Bold.ttf")
VAL_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSerif-Bold.ttf")
STIX = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")
CANVAS = 96  # glyphs are drawn on a 96x96 canvas (font size 60, baseline at y = 72), then reduced


def font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def dejavu_fonts() -> list[str]:
    styles = {"DejaVuSans": ("", "-Bold", "-Oblique", "-BoldOblique"), "DejaVuSansMono": ("", "-Bold", "-Oblique", "-BoldOblique"),
              "DejaVuSerif": ("", "-Bold", "-Italic", "-BoldItalic")}
    return [f"{fam}{s}.ttf" for fam in FAMILIES for s in styles[fam]]


class Renderer:
    """Draws one character of one font at a given size / offset / rotation, reduced to ``size`` px."""

    def __init__(self, size: int):
        from PIL import ImageFont

        self.size = size
        self._fonts: dict = {}
        self._ImageFont = ImageFont

    def font(self, name: str, px: int):
        key = (name, px)
        f = self._fonts.get(key)
        if f is None:
            f = self._fonts[key] = self._ImageFont.truetype(os.path.join(font_dir(), name), px)
        return f

    def __call__(self, name: str, ch: str, scale=1.0, dx=0.0, dy=0.0, angle=0.0) -> np.ndarray:
        from PIL import Image, ImageDraw

        img = Image.new("L", (CANVAS, CANVAS), 0)
        ImageDraw.Draw(img).text((CANVAS / 2 + dx * CANVAS, 0.75 * CANVAS + dy * CANVAS), ch,
                                 font=self.font(name, int(round(60 * scale))), fill=255, anchor="ms")
        if angle:
            img = img.rotate(angle, resample=Image.BILINEAR)
        return np.asarray(img.resize((self.size, self.size), Image.BOX), np.uint8)


def cmaps(names) -> dict[str, set]:
    from fontTools.ttLib import TTFont

    return {n: set(TTFont(os.path.join(font_dir(), n), lazy=True).getBestCmap()) for n in names}


def choose_glyphs(classes: int, render: Renderer) -> tuple[list[str], dict]:
    """``classes`` characters drawn by all 12 DejaVu fonts, most STIX-covered first, skipping
    glyphs with little ink and glyphs pixel-identical to an already chosen one in at least half
    of the DejaVu fonts (Latin/Greek/Cyrillic twins)."""
    fonts = dejavu_fonts()
    cm = cmaps(fonts + list(STIX))
    common = set.intersection(*(cm[f] for f in fonts))
    cands = sorted((c for c in common if unicodedata.category(chr(c))[0] in "LNSP"),
                   key=lambda c: (-sum(c in cm[s] for s in STIX), c))
    seen: list[dict] = [{} for _ in fonts]
    chosen: list[str] = []
    dropped = {"little_ink": 0, "identical": 0}
    for c in cands:
        imgs = [render(f, chr(c)) for f in fonts]
        if min(int((im > 64).sum()) for im in imgs) < 4:
            dropped["little_ink"] += 1
            continue
        if sum(im.tobytes() in s for im, s in zip(imgs, seen)) * 2 >= len(fonts):
            dropped["identical"] += 1
            continue
        for im, s in zip(imgs, seen):
            s.setdefault(im.tobytes(), c)
        chosen.append(chr(c))
        if len(chosen) == classes:
            break
    if len(chosen) < classes:
        raise SystemExit(f"only {len(chosen)} distinct glyphs available, {classes} asked for")
    fonts_of = {ch: [f for f in fonts + list(STIX) if ord(ch) in cm[f]] for ch in chosen}
    return chosen, {"dropped": dropped, "fonts_of": fonts_of}


@dataclass
class GlyphSet:
    chars: list
    train_x: torch.Tensor  # (n, 1, S, S) float in [0, 1]
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: dict


def glyph_set(classes: int, size: int, train_renders: int, eval_renders: int, seed: int) -> GlyphSet:
    """Render the set in memory: ``train_renders`` jittered renderings per (class, training
    font), ``eval_renders`` per (class, validation/test font)."""
    render = Renderer(size)
    chars, info = choose_glyphs(classes, render)
    rng = np.random.default_rng(seed)
    out = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for y, ch in enumerate(chars):
        for f in info["fonts_of"][ch]:
            split = "test" if f in TEST_FONTS else "val" if f in VAL_FONTS else "train"
            for _ in range(train_renders if split == "train" else eval_renders):
                s, dx, dy, a = rng.uniform(0.85, 1.1), rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.05), rng.uniform(-6, 6)
                out[split][0].append(render(f, ch, s, dx, dy, a))
                out[split][1].append(y)

    def pack(split):
        x, yy = out[split]
        return torch.from_numpy(np.stack(x)).float().div_(255).unsqueeze(1), torch.tensor(yy)

    tr, va, te = pack("train"), pack("val"), pack("test")
    fonts_per_class = [len(v) for v in info["fonts_of"].values()]
    meta = {"classes": classes, "size": size, "dropped": info["dropped"], "train_images": len(tr[1]),
            "val_images": len(va[1]), "test_images": len(te[1]), "test_fonts": list(TEST_FONTS), "val_fonts": list(VAL_FONTS),
            "fonts_per_class": [min(fonts_per_class), max(fonts_per_class)]}
    return GlyphSet(chars, *tr, *va, *te, meta)


# ----------------------------------------------------------------------------------------------
# nets, augmentation
# ----------------------------------------------------------------------------------------------
class Net(torch.nn.Module):
    """conv3x3(w) - conv3x3(2w, stride 2) - conv3x3(4w, stride 2) - maxpool - linear (BN + ReLU)."""

    def __init__(self, classes: int, width: int = 16, size: int = 24):
        super().__init__()
        w = width
        bn = torch.nn.BatchNorm2d
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, w, 3, padding=1, bias=False), bn(w), torch.nn.ReLU(),
            torch.nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), bn(2 * w), torch.nn.ReLU(),
            torch.nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False), bn(4 * w), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2))
        self.fc = torch.nn.Linear(4 * w * (size // 8) ** 2, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def rrc_coords(g: torch.Generator, n: int, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop boxes as SRe2L stores them: ``(i/H, j/W, h/H, w/W)``."""
    area = torch.empty(n).uniform_(*scale, generator=g)
    r = torch.exp(torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    i = torch.rand(n, generator=g) * (1 - h)
    j = torch.rand(n, generator=g) * (1 - w)
    return torch.stack([i, j, h, w], 1)


def affine_views(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Batched crop-and-resize (teacher training only; the distilled views use the replay's
    own ``apply_crop_flip``)."""
    n, _, H, W = x.shape
    i, j, h, w = coords.unbind(1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w, (j + w / 2) * 2 - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, (i + h / 2) * 2 - 1
    grid = F.affine_grid(theta, (n, 1, H, W), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cosine_lr(opt, step, total, base):
    for gr in opt.param_groups:
        gr["lr"] = base * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


@torch.no_grad()
def accuracy(net, x, y, batch=1000) -> float:
    net.eval()
    hits = sum(int((net(x[s:s + batch]).argmax(1) == y[s:s + batch]).sum()) for s in range(0, len(y), batch))
    net.train()
    return hits / max(1, len(y))


def train_teacher(gs: GlyphSet, width: int, epochs: int, seed: int, log) -> Net:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = Net(len(gs.chars), width, gs.train_x.shape[-1])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
    n, bs = len(gs.train_y), 256
    total, step = epochs * math.ceil(n / bs), 0
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, bs):
            b = perm[s:s + bs]
            v = affine_views(gs.train_x[b], rrc_coords(g, len(b), (0.5, 1.0)))
            cosine_lr(opt, step, total, 3e-3)
            loss = F.cross_entropy(net(v), gs.train_y[b], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        log(f"  teacher epoch {ep + 1}/{epochs}: loss {float(loss.detach()):.3f}, val acc {accuracy(net, gs.val_x, gs.val_y):.3f}")
    net.eval()
    return net


# ----------------------------------------------------------------------------------------------
# distilled set, views and the teacher's labels
# ----------------------------------------------------------------------------------------------
@dataclass
class Views:
    images: torch.Tensor  # (N, 1, S, S) the distilled set
    labels: torch.Tensor  # (N,) true classes (not used by the students)
    sample: np.ndarray  # (E*N,) sample id of each stored row, in (epoch, step, position) order
    coords: np.ndarray  # (E*N, 4)
    logits: np.ndarray  # (E*N, C) float16 teacher logits
    epochs: int
    batch: int

    @property
    def rows(self) -> int:
        return len(self.sample)

    @property
    def steps(self) -> int:
        return len(self.images) // self.batch

    def records(self):
        B = self.batch
        for g in range(self.rows // B):
            s = slice(g * B, (g + 1) * B)
            yield BatchRecord(g // self.steps, g % self.steps, self.logits[s], self.coords[s], np.zeros(B, bool), self.sample[s])


def view_batch(images: torch.Tensor, sample, coords, size: int) -> torch.Tensor:
    """The replay's exact views (``apply_crop_flip``, no flip: a mirrored glyph is another glyph)."""
    return torch.stack([apply_crop_flip(images[int(s)], c, False, size) for s, c in zip(sample, coords)])


@torch.no_grad()
def distilled_views(gs: GlyphSet, teacher: Net, ipc: int, epochs: int, batch: int, seed: int) -> Views:
    g = torch.Generator().manual_seed(seed + 1)
    C = len(gs.chars)
    pick = torch.cat([torch.nonzero(gs.train_y == c).flatten()[torch.randperm(int((gs.train_y == c).sum()), generator=g)[:ipc]]
                      for c in range(C)])
    images, labels = gs.train_x[pick], gs.train_y[pick]
    N = len(pick)
    if N % batch:
        raise SystemExit(f"IPC x classes = {N} must be a multiple of the batch size {batch}")
    size = images.shape[-1]
    sample = np.concatenate([torch.randperm(N, generator=g).numpy() for _ in range(epochs)])
    coords = rrc_coords(g, len(sample)).numpy()
    logits = np.empty((len(sample), C), np.float16)
    for s in range(0, len(sample), 1000):
        v = view_batch(images, sample[s:s + 1000], coords[s:s + 1000], size)
        logits[s:s + 1000] = teacher(v).numpy()
    return Views(images, labels, sample, coords, logits, epochs, batch)


def probs(logits, T: float) -> torch.Tensor:
    return torch.softmax(torch.as_tensor(logits).float() / T, 1)


# ----------------------------------------------------------------------------------------------
# codecs at matched bytes
# ----------------------------------------------------------------------------------------------
def _best_k(C, n, ratio, stored, ks):
    """Largest k whose stored bytes (a ``codec.budget.formulas.*_stored_row_terms`` function)
    reach ``ratio`` over S11, with the ratio it gets; None when none does."""
    s11 = BF.s11_rows(n, C)
    ok = [k for k in ks if s11 / stored(n, C, k).total >= ratio]
    return (max(ok), s11 / stored(n, C, max(ok)).total) if ok else None


def topk_choice(C, n, ratio):
    return _best_k(C, n, ratio, BF.s15_stored_row_terms, range(1, C + 1))


def pca_choice(C, n, ratio):
    return _best_k(C, n, ratio, BF.s16_stored_row_terms, range(1, C + 1))


def quant_choice(C, n, ratio):
    return _best_k(C, n, ratio, BF.s17_stored_row_terms, [2**b for b in range(1, 9)])


VQ_DCS = (1, 2, 4)  # code dimensions offered to the solver (dh follows from the budget)
VQ_KS = tuple(2**b for b in range(1, 11))  # 2 .. 1024 codes
#: VQ training options, chosen by KL on the validation fonts' labels (README: what was tried)
VQ_OPTIONS = {"space": "logits", "refine": True, "loss": "mse"}


def vq_choices(ipc, C, epochs, ratio, param_bytes=2):
    """``codec.budget.solve``'s proposals (one per dc in VQ_DCS) meeting ``ratio`` with fp16
    decoder and codebook; [] when none does."""
    try:
        return solve(ipc, C, epochs, ratio, param_bytes=param_bytes, slack=0.25, dcs=VQ_DCS, ks=VQ_KS)
    except BudgetError:
        return []


def roundtrip(cod, y):
    if hasattr(cod, "reconstruct"):
        return cod.reconstruct(y)
    return cod.decode_rows({p: torch.from_numpy(a) for p, a in cod.encode_rows(y).items()})


def val_kl(cod, zval, T) -> float:
    return float(kl_div(probs(zval, T), roundtrip(cod, zval)).mean())


def tune_eps(cod, zval, T) -> tuple[float, float]:
    """Eq. 9's epsilon from EPS_GRID by mean KL(y || y~) on validation labels; (eps, KL)."""
    best = None
    for eps in EPS_GRID:
        cod.eps = eps
        kl = val_kl(cod, zval, T)
        if best is None or kl < best[1]:
            best = (eps, kl)
    cod.eps = best[0]
    return best


# ----------------------------------------------------------------------------------------------
# students
# ----------------------------------------------------------------------------------------------
def train_student(path: str, views: Views, eval_x, eval_y, *, width: int, T: float, lr: float, seed: int,
                  lpld_pool: bool) -> float:
    """Train a student from a replay archive (decoded labels only) and return its accuracy."""
    torch.manual_seed(seed)
    net = Net(ReplayArchive(path).classes, width, views.images.shape[-1])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    if lpld_pool:  # LPLD: each epoch draws its batches with replacement from the stored pool
        sampler = LPLDBatchSampler(path, epochs=views.epochs, steps_per_epoch=views.steps, seed=seed)
        loader = torch.utils.data.DataLoader(ReplayDataset(path, views.images), batch_sampler=sampler,
                                             collate_fn=ReplayCollate(path))
    else:
        loader = replay_loader(path, views.images)  # the stored (epoch, step) batches
    total = len(loader)
    for step, (x, y) in enumerate(loader):
        cosine_lr(opt, step, total, lr)
        loss = kd_loss(net(x), y, tau=T)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return accuracy(net, eval_x, eval_y)


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------
def label_bytes(path: str) -> int:
    """Bytes of the label object's sections (rows and shared parts) in the written file."""
    return sum(r.bytes for r in attribute(path) if r.kind == "section" and r.name.startswith("labels/"))


def build_codecs(views: Views, zval, args, log) -> list[dict]:
    """Every (codec, target ratio) setting, fitted; VQ's proposal chosen on validation labels."""
    C, n, T = views.logits.shape[1], views.rows, args.T
    ipc = len(views.images) // C
    fit_rows = views.logits[np.random.default_rng(0).permutation(n)[: args.fit_rows]]
    out = [{"codec": "full fp16", "target": 1, "setting": "lpld ratio=1 (all logits, fp16)",
            "make": lambda: LPLDCodec(C, 1.0, input="logits", temperature=T), "lpld_pool": False}]
    for ratio in args.ratios:
        # VQ: the solver's proposals, each trained, the best on validation KL kept
        best = None
        for p in vq_choices(ipc, C, views.epochs, ratio) if "vq" in args.codecs else ():
            t = time.time()
            cod = train_vq(fit_rows, dh=p.dh, dc=p.dc, k=p.k, input="logits", temperature=T, param_dtype="f16",
                           epochs=args.vq_epochs, batch_size=512, lr=args.vq_lr, seed=0, progress=False,
                           init_sample=min(8192, len(fit_rows)), **args.vq_options)
            eps, kl = tune_eps(cod, zval, T)
            log(f"  vq {ratio}x dh={p.dh} dc={p.dc} k={p.k}: val KL {kl:.4f} (eps {eps:g}, {time.time() - t:.0f} s)")
            if best is None or kl < best[0]:
                best = (kl, cod, p)
        if best is not None:
            kl, cod, p = best
            out.append({"codec": "vq", "target": ratio, "setting": f"dh={p.dh} dc={p.dc} k={p.k}", "make": (lambda c=cod: c),
                        "val_kl": kl, "lpld_pool": False})
        else:
            out.append({"codec": "vq", "target": ratio, "setting": None})
        ch = topk_choice(C, n, ratio)
        if ch:
            best = None
            for missing in ("renorm", "uniform"):
                cod = TopKCodec(C, ch[0], missing=missing, input="logits", temperature=T)
                eps, kl = tune_eps(cod, zval, T)
                if best is None or kl < best[0]:
                    best = (kl, cod)
            out.append({"codec": "topk", "target": ratio, "setting": f"k={ch[0]} {best[1].missing}",
                        "make": (lambda c=best[1]: c), "val_kl": best[0], "lpld_pool": False})
        else:
            out.append({"codec": "topk", "target": ratio, "setting": None})
        ch = pca_choice(C, n, ratio)
        if ch:
            cod = fit(PCACodec(C, ch[0], input="logits", temperature=T), fit_rows)
            eps, kl = tune_eps(cod, zval, T)
            out.append({"codec": "pca", "target": ratio, "setting": f"k={ch[0]}", "make": (lambda c=cod: c), "val_kl": kl,
                        "lpld_pool": False})
        else:
            out.append({"codec": "pca", "target": ratio, "setting": None})
        ch = quant_choice(C, n, ratio)
        if ch:
            cod = fit(QuantCodec(C, ch[0], input="logits", temperature=T), fit_rows)
            eps, kl = tune_eps(cod, zval, T)
            out.append({"codec": "quant", "target": ratio, "setting": f"levels={ch[0]}", "make": (lambda c=cod: c),
                        "val_kl": kl, "lpld_pool": False})
        else:
            out.append({"codec": "quant", "target": ratio, "setting": None})
        cod = LPLDCodec(C, float(ratio), batch_size=views.batch, batches_per_epoch=views.steps, epochs=views.epochs,
                        input="logits", temperature=T)
        if BF.s11_rows(n, C) / BF.s11_rows(cod.max_rows, C) >= ratio:
            out.append({"codec": "lpld", "target": ratio, "setting": f"pool={cod.pool_batches} batches",
                        "make": (lambda c=cod: c), "lpld_pool": True})
        else:  # the pool cannot shrink below one batch
            out.append({"codec": "lpld", "target": ratio, "setting": None})
    return [st for st in out if st["codec"] == "full fp16" or st["codec"] in args.codecs]


def run(args, log) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.time()
    gs = glyph_set(args.classes, args.size, args.train_renders, args.eval_renders, args.seed)
    log(f"glyph set: {json.dumps(gs.info)} ({time.time() - t0:.0f} s)")
    t = time.time()
    teacher = train_teacher(gs, args.width, args.teacher_epochs, args.seed, log)
    tacc = {"val": accuracy(teacher, gs.val_x, gs.val_y), "test": accuracy(teacher, gs.test_x, gs.test_y)}
    log(f"teacher: val acc {tacc['val']:.4f}, test acc {tacc['test']:.4f} ({time.time() - t:.0f} s)")
    t = time.time()
    views = distilled_views(gs, teacher, args.ipc, args.epochs, args.batch, args.seed)
    g = torch.Generator().manual_seed(args.seed + 2)
    vi = torch.randint(len(gs.val_y), (args.val_rows,), generator=g)
    with torch.no_grad():
        zval = teacher(affine_views(gs.val_x[vi], rrc_coords(g, len(vi)))).half().numpy()
    log(f"distilled set: {len(views.images)} images, {views.rows} views ({time.time() - t:.0f} s)")
    t = time.time()
    settings = build_codecs(views, zval, args, log)
    log(f"codecs fitted ({time.time() - t:.0f} s)")
    eval_x, eval_y = (gs.val_x, gs.val_y) if args.validate else (gs.test_x, gs.test_y)
    s11 = BF.s11_rows(views.rows, len(gs.chars))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddz-fidelity-") as tmp:
        for st in settings:
            row = {k: v for k, v in st.items() if k not in ("make",)}
            if st["setting"] is None:
                rows.append(row)
                log(f"| {st['codec']} | {st['target']}x | n/a (cannot reach the ratio) |")
                continue
            cod = st["make"]()
            path = os.path.join(tmp, f"{st['codec'].split()[0]}-{st['target']}.ddz")
            t = time.time()
            write_replay_archive(path, cod, views.records, classes=len(gs.chars), num_samples=len(views.images),
                                 crop={"size": args.size, "scale": [0.35, 1.0], "interpolation": "bilinear",
                                       "coords": "(i/H, j/W, h/H, w/W)"})
            nbytes = label_bytes(path)
            row.update(bytes=nbytes, ratio=s11 / nbytes, config=cod.get_config(), write_s=time.time() - t)
            accs = []
            for seed in range(args.seeds):
                t = time.time()
                accs.append(train_student(path, views, eval_x, eval_y, width=args.width, T=args.T, lr=args.lr,
                                          seed=args.seed + 100 + seed, lpld_pool=st["lpld_pool"]))
                row["student_s"] = time.time() - t
            os.unlink(path)
            row["acc"] = accs
            rows.append(row)
            log(f"| {st['codec']} | {st['target']}x | {st['setting']} | {row['ratio']:.1f}x | "
                f"{' '.join(f'{100 * a:.1f}' for a in accs)} | {row['student_s']:.0f} s/student |")
            if args.json:  # partial results survive an interrupted run
                with open(args.json, "w") as f:
                    json.dump({"rows": rows, "partial": True}, f, indent=1, default=str)
    full = float(np.mean(next(r for r in rows if r["codec"] == "full fp16")["acc"]))
    for r in rows:
        if "acc" in r:
            r["mean"] = float(np.mean(r["acc"]))
            r["kept"] = r["mean"] / full if full else float("nan")
    info = {"glyphs": gs.info, "teacher_acc": tacc, "ipc": args.ipc, "epochs": args.epochs, "batch": args.batch,
            "rows": views.rows, "T": args.T, "seeds": args.seeds, "split": "validation" if args.validate else "test",
            "threads": args.threads, "seconds": time.time() - t0, "args": {k: v for k, v in vars(args).items()}}
    rows.sort(key=lambda r: (r["target"], ("full fp16", "vq", "topk", "pca", "quant", "lpld").index(r["codec"])))
    return {"rows": rows, "info": info}


def table(res: dict) -> str:
    split = res["info"]["split"]
    lines = [f"| codec | target | setting | stored ratio | student top-1 ({split}, mean of {res['info']['seeds']}) | "
             "% of full-label student | per seed | val KL(y‖ỹ) |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "acc" not in r:
            lines.append(f"| {r['codec']} | {r['target']}x | cannot reach the ratio | | | | | |")
            continue
        kl = f"{r['val_kl']:.4f}" if r.get("val_kl") is not None else ""
        lines.append(f"| {r['codec']} | {r['target']}x | {r['setting']} | {r['ratio']:.1f}x | {100 * r['mean']:.1f}% | "
                     f"{100 * r['kept']:.1f}% | {' / '.join(f'{100 * a:.1f}' for a in r['acc'])} | {kl} |")
    return "\n".join(lines)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 50 classes, IPC 2, 2 epochs, 1 seed")
    ap.add_argument("--validate", action="store_true", help="score students on the validation fonts, not the test fonts")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of stored views (= student epochs)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--T", type=float, default=20.0, help="distillation temperature (labels and kd_loss)")
    ap.add_argument("--seeds", type=int, default=1, help="students per archive")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--train-renders", type=int, default=4)
    ap.add_argument("--eval-renders", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3, help="student AdamW learning rate (cosine schedule)")
    ap.add_argument("--vq-epochs", type=int, default=1)
    ap.add_argument("--vq-lr", type=float, default=1e-3)
    ap.add_argument("--fit-rows", type=int, default=20000, help="rows the VQ / PCA / quant codecs are fitted on")
    ap.add_argument("--val-rows", type=int, default=4000, help="validation-font views that choose eps and options")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codecs", default=",".join(CODECS),
                    help="comma-separated subset of vq,topk,pca,quant,lpld (full fp16, the reference, always runs)")
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="comma-separated target ratios over S11")
    ap.add_argument("--json", help="write rows and run info to this file")
    args = ap.parse_args(argv)
    args.codecs = [c for c in args.codecs.split(",") if c]
    if not set(args.codecs) <= set(CODECS):
        ap.error(f"--codecs: unknown codec(s) {sorted(set(args.codecs) - set(CODECS))}, choose from {','.join(CODECS)}")
    try:
        args.ratios = [int(r) for r in args.ratios.split(",") if r]
    except ValueError:
        ap.error(f"--ratios: comma-separated integers, got {args.ratios!r}")
    if args.quick:
        args.classes, args.ipc, args.epochs, args.batch, args.seeds = 50, 2, 8, 20, 1
        args.teacher_epochs, args.train_renders, args.fit_rows, args.val_rows, args.vq_epochs = 2, 2, 800, 500, 1
    args.vq_options = dict(VQ_OPTIONS)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    res = run(args, log)
    log("")
    log(table(res))
    log(f"\n{res['info']['seconds']:.0f} s, {args.threads} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
