"""Files written the way the producers' own code writes them (small generated data, no network).

Each writer follows the producer's code path, at the commit named, step for step where it matters for
the bytes on disk and for what the teacher saw:

* SRe2L ``relabel/generate_soft_label.py`` + ``relabel/utils_fkd.py`` (VILA-Lab/SRe2L@8d00cba);
* LPLD ``relabel_and_validate/generate_soft_label_pruning.py`` (he-y/soft-label-pruning-for-dataset-distillation@63eee18);
* FKD ``FKD_SLG/generate_soft_label.py`` (szq0214/FKD@afd5294);
* LVDD ``main_method.py`` (Tucker branch) and ``quantize_vae.py`` (Ning9319/Latent_Video_Dataset_Distillation@2f7c02d),
  with optimum-quanto's qint8 on-disk format (``WeightQBytesTensor`` ``_data``/``_scale``,
  ``QModuleMixin`` ``input_scale``/``output_scale``, ``quantization_map()``) written from its code.

torchvision is not a dependency: its RandomResizedCrop.get_params, PIL resized_crop, hflip, ToTensor and
Normalize are restated here as torchvision computes them on PIL images.
"""

from __future__ import annotations

import json
import math
import os
import zipfile

import numpy as np
import torch
from PIL import Image

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# -- torchvision, as it runs on PIL images -----------------------------------------------------
def rrc_params(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params (global torch RNG)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img, i, j, h, w, size, resample=Image.BILINEAR):
    """torchvision F.resized_crop on a PIL image: crop((left, top, left+w, top+h)), then resize."""
    out = img.crop((j, i, j + w, i + h))
    return out if out.size == (size, size) else out.resize((size, size), resample)


def to_tensor(pic):
    """torchvision ToTensor of an RGB PIL image."""
    t = torch.from_numpy(np.array(pic, np.uint8, copy=True)).view(pic.size[1], pic.size[0], 3)
    return t.permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)


def normalize(t):
    """torchvision Normalize(MEAN, STD) on a float tensor (out of place)."""
    mean = torch.as_tensor(MEAN, dtype=t.dtype).view(-1, 1, 1)
    std = torch.as_tensor(STD, dtype=t.dtype).view(-1, 1, 1)
    return t.sub(mean).div(std)


def sre2l_view(img, coords, flip, size):
    """ComposeWithCoords(RandomResizedCropWithCoords, RandomHorizontalFlipWithRes, ToTensor, normalize)
    when (coords, flip) are given (fkd_load): the stored coords scaled back by the PIL size."""
    i = coords[0].item() * img.size[1]
    j = coords[1].item() * img.size[0]
    h = coords[2].item() * img.size[1]
    w = coords[3].item() * img.size[0]
    out = resized_crop(img, i, j, h, w, size)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return normalize(to_tensor(out))


def images_pil(n, side=40, seed=0):
    """``n`` RGB images with some structure (what SRe2L's recover step writes as JPEG/PNG)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        yy, xx = np.mgrid[0:side, 0:side + 4 * (k % 3)]
        base = np.stack([(xx * (3 + k) + yy * 5) % 256, (yy * (7 + k)) % 256, (xx * yy + 31 * k) % 256], -1)
        noise = rng.integers(0, 40, base.shape)
        out.append(Image.fromarray(((base + noise) % 256).astype(np.uint8), "RGB"))
    return out


def teacher(classes, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, classes)).eval()


# -- SRe2L / LPLD relabelling ------------------------------------------------------------------
def rand_bbox(size, lam):
    """SRe2L utils_fkd.rand_bbox: numpy int64 corners (np.clip of Python ints)."""
    W = size[2]
    H = size[3]
    cut_rat = np.sqrt(1. - lam)
    cut_w = int(W * cut_rat)
    cut_h = int(H * cut_rat)
    cx = np.random.randint(W)
    cy = np.random.randint(H)
    bbx1 = np.clip(cx - cut_w // 2, 0, W)
    bby1 = np.clip(cy - cut_h // 2, 0, H)
    bbx2 = np.clip(cx + cut_w // 2, 0, W)
    bby2 = np.clip(cy + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def mix_aug_save(images, mix_type, cutmix=1.0, mixup=0.8):
    """utils_fkd.mix_aug in fkd_save mode (CPU instead of .cuda())."""
    if mix_type == "mixup":
        rand_index = torch.randperm(images.size()[0])
        lam = np.random.beta(mixup, mixup)
        return lam * images + (1 - lam) * images[rand_index], rand_index.cpu(), lam, None
    if mix_type == "cutmix":
        rand_index = torch.randperm(images.size()[0])
        lam = np.random.beta(cutmix, cutmix)
        bbx1, bby1, bbx2, bby2 = rand_bbox(images.size(), lam)
        images[:, :, bbx1:bbx2, bby1:bby2] = images[rand_index, :, bbx1:bbx2, bby1:bby2]
        return images, rand_index.cpu(), lam, [bbx1, bby1, bbx2, bby2]
    return images, None, None, None


def _relabel_batch(imgs, ids, size, mix_type, net, use_fp16):
    """One DataLoader batch of ImageFolder_FKD_MIX in fkd_save mode, then save()'s body."""
    views, flips, coords = [], [], []
    for sid in ids:
        img = imgs[sid]
        i, j, h, w = rrc_params(img.size[0], img.size[1])
        c = torch.FloatTensor((i / img.size[1], j / img.size[0], h / img.size[1], w / img.size[0]))
        out = resized_crop(img, i, j, h, w, size)
        flip = False
        if torch.rand(1) < 0.5:
            flip = True
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        views.append(normalize(to_tensor(out)))
        flips.append(flip)
        coords.append(c)
    images = torch.stack(views)
    flip_status, coords_status = torch.tensor(flips), torch.stack(coords)  # default_collate
    images, mix_index, mix_lam, mix_bbox = mix_aug_save(images, mix_type)
    with torch.no_grad():
        output = net(images)
    if use_fp16:
        output = output.half()
    return [coords_status, flip_status, mix_index, mix_lam, mix_bbox, output.cpu()], images


def write_sre2l_tree(root, imgs, *, batch_size, epochs, classes, mix_type, size=16, fkd_seed=42, use_fp16=True, seed=0):
    """SRe2L generate_soft_label.py: RandomSampler(generator seeded with --fkd-seed), one directory per epoch.

    Returns ``{(epoch, batch): (sample ids, the mixed batch the teacher saw)}``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    net = teacher(classes, seed)
    sampler = torch.utils.data.RandomSampler(range(len(imgs)), generator=torch.Generator().manual_seed(fkd_seed))
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    seen = {}
    for epoch in range(epochs):
        d = os.path.join(root, f"epoch_{epoch}")
        os.makedirs(d, exist_ok=True)
        for batch_idx, ids in enumerate(batches):
            cfg, images = _relabel_batch(imgs, ids, size, mix_type, net, use_fp16)
            torch.save(cfg, os.path.join(d, f"batch_{batch_idx}.tar"))
            seen[(epoch, batch_idx)] = (list(ids), images)
    return seen


def write_lpld_tree(root, imgs, *, batch_size, epochs, prune_ratio, classes, mix_type="cutmix", size=16, fkd_seed=42,
                    use_fp16=True, seed=0):
    """LPLD generate_soft_label_pruning.py: drop_last when pruning, ``total_steps = int(E * nb * (1 - p))``,
    ``total_steps // nb + 1`` epoch directories, a global batch counter that stops the epoch loop when it
    reaches total_steps (so an extra whole epoch is written when total_steps % nb == 0), and
    ``sampler_indices_epoch.json``.  Returns ``(seen, total_steps, nb)``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    net = teacher(classes, seed)
    sampler = torch.utils.data.RandomSampler(range(len(imgs)), generator=torch.Generator().manual_seed(fkd_seed))
    drop_last = prune_ratio > 0
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=drop_last)
    num_batches = len(batches)
    total_steps = int(epochs * num_batches * (1 - prune_ratio))
    sampler_indices = {}
    seen = {}
    batch_counter = 0
    for epoch in range(total_steps // num_batches + 1):
        d = os.path.join(root, f"epoch_{epoch}")
        os.makedirs(d, exist_ok=True)
        for batch_idx, ids in enumerate(batches):
            cfg, images = _relabel_batch(imgs, ids, size, mix_type, net, use_fp16)
            torch.save(cfg, os.path.join(d, f"batch_{batch_idx}.tar"))
            sampler_indices.setdefault(str(epoch), [])
            sampler_indices[str(epoch)] += list(ids)
            seen[(epoch, batch_idx)] = (list(ids), images)
            batch_counter += 1
            if batch_counter == total_steps:
                break
    with open(os.path.join(root, "sampler_indices_epoch.json"), "w") as f:
        json.dump(sampler_indices, f)
    return seen, total_steps, num_batches


def lpld_train_draws(pool_size, nb, train_epochs):
    """LPLD train_FKD_label_pruning_batch.py, prune_metric 'random', granularity 'batch_to_epoch':
    the batch ids of every training epoch (global torch RNG), after its 'drop last batch' rule."""
    pool = list(range(train_epochs * nb))[:pool_size]
    epochs = []
    for _ in range(0, train_epochs * nb, nb):
        step_list = []
        for _i in range(nb):
            random_step = torch.randint(0, len(pool), (1,)).item()
            step_list.append(pool[random_step])
        for i, batch_idx in enumerate(step_list):
            if (batch_idx + 1) % nb == 0:
                step_list[i] = batch_idx - 1
        epochs.append(step_list)
    return epochs


# -- FKD per-image soft labels -----------------------------------------------------------------
def label_quantization(full_label, label_type):
    """FKD_SLG generate_soft_label.label_quantization."""
    out = []
    for p in full_label:
        if label_type == "hard":
            out.append(torch.argmax(p))
        elif label_type == "smoothing":
            o = torch.argmax(p)
            out.append(torch.stack([o, p[o]], dim=0))
        elif label_type in ("marginal_smoothing_k5", "marginal_renorm_k5"):
            o = torch.argsort(p, descending=True)
            out.append(torch.stack([o[:5], p[o[:5]]], dim=0))
        elif label_type == "marginal_smoothing_k10":
            o = torch.argsort(p, descending=True)
            out.append(torch.stack([o[:10], p[o[:10]]], dim=0))
    return torch.stack(out, dim=0).detach().numpy()


def write_fkd_tree(root, named_imgs, *, num_crops, num_seg, classes, label_type="marginal_smoothing_k5", temp=1.0,
                   use_fp16=True, input_size=16, seed=0):
    """FKD generate_soft_label.py: one ``<split>/<class>/<stem>.tar`` per image holding
    ``[coords, flip, labels]`` as numpy arrays (np.float16 with --use_fp16 when num_crops > num_seg).
    ``named_imgs``: ``[(relative image path like 'train/n01/n01_7.JPEG', PIL image)]``.
    Returns ``{key: (coords, flip, probabilities)}`` with key the path without extension."""
    torch.manual_seed(seed)
    net = teacher(classes, seed)
    written = {}
    for rel, img in named_imgs:
        coords_all, flips, views = [], [], []
        for _ in range(num_crops):  # ImageFolder_FKD_GSL.__getitem__ without a reference path
            i, j, h, w = rrc_params(img.size[0], img.size[1], scale=(0.08, 0.936))
            coords_all.append(torch.FloatTensor((i / img.size[1], j / img.size[0], h / img.size[1], w / img.size[0])))
            out = resized_crop(img, i, j, h, w, input_size, Image.BICUBIC)
            flip = False
            if torch.rand(1) < 0.5:
                flip = True
                out = out.transpose(Image.FLIP_LEFT_RIGHT)
            flips.append(flip)
            views.append(normalize(to_tensor(out)))
        images = torch.stack(views)
        coords = torch.stack(coords_all)  # after the loader's stack/permute: [num_crops, 4]
        flip_status = torch.tensor(flips)
        with torch.no_grad():
            if num_crops <= num_seg:
                output = torch.nn.functional.softmax(net(images) / temp, dim=1)
                state = [coords.numpy(), flip_status.numpy(), label_quantization(output, label_type)]
            else:
                output = torch.cat([torch.nn.functional.softmax(net(images[s * num_seg:(s + 1) * num_seg]) / temp, dim=1)
                                    for s in range(int(num_crops / num_seg))])
                quan = label_quantization(output, label_type)
                state = ([np.float16(coords.numpy()), flip_status.numpy(), np.float16(quan)] if use_fp16
                         else [coords.numpy(), flip_status.numpy(), quan])
        key = os.path.splitext(rel)[0]
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        torch.save(state, os.path.join(root, key + ".tar"))
        written[key] = (state[0], state[1], output)
    return written


# -- LVDD --------------------------------------------------------------------------------------
def write_lvdd_synthetic(path, image_syn, compress_ratio=0.75, batch_size=400):
    """main_method.py, --method Tucker: tensorly tucker per chunk of 400 (pytorch backend), saved as
    ``{"cores": [...], "factors": [[U_N, U_T, U_C, U_H, U_W], ...]}``."""
    import tensorly as tl
    from tensorly.decomposition import tucker

    tl.set_backend("pytorch")
    try:
        N, T, C, H, W = image_syn.shape
        new_T, new_C = max(1, int(T * compress_ratio)), C
        new_H, new_W = max(1, int(H * compress_ratio)), max(1, int(W * compress_ratio))
        core_list, factors_list = [], []
        for start in range(0, N, batch_size):
            end = min(start + batch_size, N)
            core, factors = tucker(image_syn[start:end], rank=[end - start, new_T, new_C, new_H, new_W])
            core_list.append(core.cpu())
            factors_list.append([f.cpu() for f in factors])
        torch.save({"cores": core_list, "factors": factors_list}, path)
        return torch.cat([tl.tucker_to_tensor((c, f)) for c, f in zip(core_list, factors_list)], 0)
    finally:
        tl.set_backend("numpy")


def quanto_qint8_state(model):
    """optimum-quanto ``quantize(model, weights=qint8, activations=None); freeze(model)`` then
    ``model.state_dict()`` and ``quantization_map(model)``: every nn.Linear / nn.Conv2d weight becomes
    ``weight._data`` (int8, round(w / scale) clamped to [-128, 127]) and ``weight._scale``
    (AbsmaxOptimizer: amax|w| over all but axis 0, keepdim, / 127, in the weight's dtype), and the module
    gets ``input_scale`` / ``output_scale`` buffers (ones)."""
    qmap, state = {}, {}
    qnames = {n for n, m in model.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)}
    for name, t in model.state_dict().items():
        mod, _, leaf = name.rpartition(".")
        if mod in qnames and leaf == "weight":
            dims = list(range(1, t.ndim))
            scale = torch.amax(torch.abs(t), dim=dims, keepdim=True) / 127
            data = torch.clamp(torch.round(t / scale), min=-128, max=127).to(torch.int8)
            state[f"{name}._data"] = data.contiguous()
            state[f"{name}._scale"] = scale.contiguous()
            qmap[mod] = {"weights": "qint8", "activations": "none"}
            state[f"{mod}.input_scale"] = torch.ones((), dtype=t.dtype)
            state[f"{mod}.output_scale"] = torch.ones((), dtype=t.dtype)
        else:
            state[name] = t.contiguous()
    return state, qmap


def write_quanto_vae_dir(path, vae):
    """LVDD quantize_vae.save_quantized_vae plus the config.json use_quantized_vae reads."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    state, qmap = quanto_qint8_state(vae)
    save_file(state, os.path.join(path, "quantized_vae.safetensors"))
    with open(os.path.join(path, "quantization_map.json"), "w") as f:
        json.dump(qmap, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(vae.to_json_string())
    return state, qmap


# -- pickle surgery for refusal tests ----------------------------------------------------------
def rewrite_pickle(path, old: bytes, new: bytes):
    """Replace bytes in the data.pkl of a torch zip file (protocol-2 GLOBAL opcodes are text lines)."""
    with zipfile.ZipFile(path) as zin:
        items = [(i.filename, zin.read(i.filename)) for i in zin.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in items:
            if name.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            z.writestr(name, data)
