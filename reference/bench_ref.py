"""The PyTorch side of the benchmarks: the reference written the way the research code is
(explicit matmul attention in the two-path blocks, eager, fp32), on the same random weights.

    python reference/bench_ref.py --weights out/random-vit-b-16.safetensors --image-size 512 \
        --batch 1 --mode infer --threads 2

Modes: `infer` (global score, per-layer maps, Gaussian smoothing, joint score; text features
computed once), `train-naive` (head weights inside the attention blocks, autograd through the
whole trunk: the straightforward implementation), `train-ours` (the engine's algorithm in PyTorch:
trunk without autograd, head-weight gradient from the value-value sums). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import headclip_ref as ref


def default_layers(layers: int):
    start = {24: 6, 12: 4}.get(layers, max(1, layers // 3))
    readout = sorted({max(1, layers * q // 4) for q in range(1, 5)})
    return start, readout


def random_params(model, cfg: ref.Config, n_deep: int = 8) -> ref.Params:
    w = model.ln_final.weight.shape[0]
    layers = len(model.visual.transformer.resblocks)
    heads = model.visual.transformer.resblocks[0].attn.num_heads
    g = torch.Generator().manual_seed(0)
    return ref.Params(
        ctx_pos=0.02 * torch.randn(12, w, generator=g), ctx_neg=0.02 * torch.randn(12, w, generator=g),
        deep=[0.02 * torch.randn(4, w, generator=g) for _ in range(n_deep)],
        theta=torch.zeros(layers - cfg.dpam_start + 1, heads))


def train_ours(model, images, labels, masks, cfg: ref.Config, params: ref.Params):
    """Trunk without autograd; dL/dw from suffix sums of the read-out gradients (as the engine)."""
    visual = model.visual
    side = images.shape[-1]
    with torch.no_grad():
        o, tokens, vv = ref.image_trunk(model, images, cfg, params, keep_vv=True)
        tokens = {l: t.clone() for l, t in tokens.items()}
        g = F.normalize(o[:, 0] @ visual.proj, dim=-1)
    leaves = {l: t.requires_grad_(True) for l, t in tokens.items()}
    text = ref.encode_prompted_text(model, params)
    loss = F.cross_entropy(g @ text.T / ref.TAU, labels)
    for l in sorted(leaves):
        f = F.normalize(visual.ln_post(leaves[l]) @ visual.proj, dim=-1)
        p = torch.softmax(f[:, 1:] @ text.T / ref.TAU, dim=-1)
        gr = round(math.sqrt(p.shape[1]))
        p = F.interpolate(p.permute(0, 2, 1).reshape(-1, 2, gr, gr), size=(side, side), mode="bilinear")
        loss = loss + ref.focal_loss(p, masks) + ref.dice_loss(p[:, 1], masks) + ref.dice_loss(p[:, 0], 1 - masks)
    loss.backward()
    blocks = list(model.visual.transformer.resblocks)[cfg.dpam_start - 1:]
    suffix, surrogate = None, 0
    for j in reversed(range(len(blocks))):
        layer = cfg.dpam_start + j
        if layer in leaves:
            suffix = leaves[layer].grad if suffix is None else suffix + leaves[layer].grad
        if suffix is None:
            continue
        z = vv[j]
        bb, h, n, d = z.shape
        gz = (suffix @ blocks[j].attn.out_proj.weight).view(bb, n, h, d).transpose(1, 2)
        w = ref.head_weights(cfg, params, j, torch.zeros(bb, 1, 1, device=z.device), h)
        surrogate = surrogate + (w * (gz * z).sum((2, 3))).sum()
    if torch.is_tensor(surrogate):
        surrogate.backward()
    return loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mode", default="infer", choices=["infer", "train-naive", "train-ours"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = ref.load_clip(load_file(args.weights)).to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    start, readout = default_layers(len(model.visual.transformer.resblocks))
    cfg = ref.Config(readout=readout, dpam_start=start)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=dev)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    if args.mode == "infer":
        with torch.no_grad():
            text = ref.encode_ensemble_text(model)
        params = ref.Params()

        def step():
            with torch.no_grad():
                ref.score(model, images, text, cfg, params)
    else:
        params = random_params(model, cfg)
        named = ref.trainable(params)
        for k in list(named):
            named[k] = named[k].to(dev).requires_grad_(True)
        params = ref.Params(ctx_pos=named["prompt.ctx_pos"], ctx_neg=named["prompt.ctx_neg"],
                            deep=[named[f"prompt.deep.{i}"] for i in range(8)], theta=named["lhw.theta"])
        for k, t in ref.trainable(params).items():
            assert t.is_leaf and t.device.type == dev.type, k
        opt = torch.optim.Adam(list(named.values()), lr=1e-3, betas=(0.5, 0.999))
        labels = (torch.arange(args.batch, device=dev) % 2 == 0).long()
        masks = torch.zeros(args.batch, args.image_size, args.image_size, device=dev)
        masks[0::2, : args.image_size // 3] = 1

        def step():
            opt.zero_grad()
            if args.mode == "train-naive":
                ref.training_loss(model, images, labels, masks, cfg, params)["total"].backward()
            else:
                train_ours(model, images, labels, masks, cfg, params)
            opt.step()

    for _ in range(args.warmup):
        step()
        sync()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({"engine": "pytorch-reference", "mode": args.mode, "batch": args.batch,
                      "device": args.device, "threads": torch.get_num_threads(),
                      "ms_per_batch_median": median, "ms_per_batch_min": times[0],
                      "images_per_s": args.batch * 1e3 / median,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
