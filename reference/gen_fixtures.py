"""Generates random-weight CLIP checkpoints, HeadCLIP parameters and expected outputs.

    reference/regen.sh                      # tiny fixtures, committed (crates/headclip/tests/fixtures/tiny)
    reference/regen.sh --preset vit-b-16    # full ViT-B/16 shapes, one image, into out/fixtures/vit-b-16

Weights are stored in OpenAI's key layout, in fp16 as OpenAI's archives are, both as safetensors
and as a TorchScript archive (torch.jit.trace of OpenAI's model, as the released files were made).
Every expected value is computed in fp32 from the fp16 weights, so the engine sees the same numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import headclip_ref as ref
from clip.model import CLIP

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"

PRESETS = {
    # name: (embed, vision layers, vision width, patch, pretrained res, text width, text layers,
    #        image size, readout, dpam start, images)
    "tiny": dict(embed=64, v_layers=6, v_width=128, patch=16, res=64, t_width=64, t_layers=9,
                 side=96, readout=[2, 4, 6], dpam_start=3, images=2,
                 out=REPO / "crates/headclip/tests/fixtures/tiny"),
    "vit-b-16": dict(embed=512, v_layers=12, v_width=768, patch=16, res=224, t_width=512,
                     t_layers=12, side=512, readout=[3, 6, 9, 12], dpam_start=4, images=1,
                     out=REPO / "out/fixtures/vit-b-16"),
}

IMAGES = ["mvtec_bottle/bottle/test/broken_large/000.png", "mvtec_bottle/bottle/test/good/000.png"]


def random_clip(p: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    model = CLIP(p["embed"], p["res"], p["v_layers"], p["v_width"], p["patch"], 77, 49408,
                 p["t_width"], p["t_width"] // 64, p["t_layers"])
    sd = model.state_dict()
    for k, v in sd.items():
        # OpenAI's init leaves norms at 1/0 and attention biases at 0: perturb them so that
        # every parameter reaches the outputs.
        if v.dim() == 1 and v.dtype.is_floating_point:
            base = torch.ones_like(v) if k.endswith("ln_1.weight") or k.endswith("ln_2.weight") \
                or k.endswith("ln_pre.weight") or k.endswith("ln_post.weight") \
                or k.endswith("ln_final.weight") else v
            sd[k] = base + 0.05 * torch.randn_like(v)
    return {k: v.half().contiguous() for k, v in sd.items()}


def random_params(p: dict, cfg: ref.Config, seed: int) -> ref.Params:
    g = torch.Generator().manual_seed(seed)
    w, heads, rows = p["t_width"], p["v_width"] // 64, p["v_layers"] - cfg.dpam_start + 1
    theta = 0.8 * torch.randn(rows, heads, generator=g)
    if cfg.lhw_form == "identity":
        theta = 1 + 0.3 * theta
    return ref.Params(
        ctx_pos=0.02 * torch.randn(12, w, generator=g) * 10,
        ctx_neg=0.02 * torch.randn(12, w, generator=g) * 10,
        deep=[0.02 * torch.randn(4, w, generator=g) * 10 for _ in range(8)],
        theta=theta,
        u=0.5 * torch.randn(rows, heads, p["v_width"], generator=g) if cfg.lhw_dynamic else None,
    )


def save_params(params: ref.Params, cfg: ref.Config, side: int, path: Path):
    tensors = {"prompt.ctx_pos": params.ctx_pos, "prompt.ctx_neg": params.ctx_neg,
               "lhw.theta": params.theta}
    for i, d in enumerate(params.deep):
        tensors[f"prompt.deep.{i}"] = d
    if params.u is not None:
        tensors["lhw.u"] = params.u
    tensors = {k: v.float().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"headclip.config": json.dumps(cfg.to_json(side))})


def save_torchscript(model: torch.nn.Module, res: int, path: Path):
    image = torch.zeros(1, 3, res, res)
    text = ref.template_tokens()[:1]
    # The traced module shares its parameters with the model it traced: trace a copy.
    traced = torch.jit.trace(copy.deepcopy(model), (image, text), check_trace=False)
    for t in traced.parameters():
        t.data = t.data.half()
    torch.jit.save(traced, str(path))


def load_images(side: int, count: int) -> torch.Tensor:
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    out = []
    for rel in IMAGES[:count]:
        im = Image.open(SHARED / rel).convert("RGB").resize((side, side), Image.BICUBIC)
        x = (np.asarray(im, dtype=np.float32) / 255.0 - mean) / std
        out.append(torch.from_numpy(x.transpose(2, 0, 1).copy()))
    return torch.stack(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=111)
    args = ap.parse_args()
    p = PRESETS[args.preset]
    out: Path = p["out"]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    sd = random_clip(p, args.seed)
    save_file(sd, str(out / "clip_openai.safetensors"))
    model = ref.load_clip(sd)
    save_torchscript(model, p["res"], out / "clip_openai.pt")

    images = load_images(p["side"], p["images"])
    expected = {"images": images, "tokens": ref.template_tokens()}

    cases = {
        "learned": ref.Config(readout=p["readout"], dpam_start=p["dpam_start"]),
        "dynamic": ref.Config(readout=p["readout"], dpam_start=p["dpam_start"], lhw_dynamic=True,
                              jas_lambda=0.3, jas_top_fraction=0.05),
        "both": ref.Config(readout=p["readout"], dpam_start=p["dpam_start"], lhw_form="sigmoid",
                           lhw_paths="both", global_ln_post=True),
        "identity": ref.Config(readout=p["readout"], dpam_start=p["dpam_start"],
                               lhw_form="identity"),
    }
    if args.preset != "tiny":
        cases = {"learned": cases["learned"]}
    with torch.no_grad():
        for i, (name, cfg) in enumerate(cases.items()):
            params = random_params(p, cfg, args.seed + 1 + i)
            save_params(params, cfg, p["side"], out / f"params_{name}.safetensors")
            text = ref.encode_prompted_text(model, params)
            expected[f"{name}.text"] = text
            for k, v in ref.score(model, images, text, cfg, params).items():
                expected[f"{name}.{k}"] = torch.as_tensor(np.asarray(v, dtype=np.float32))

        cfg = ref.Config(readout=p["readout"], dpam_start=p["dpam_start"])
        text = ref.encode_ensemble_text(model)
        expected["ensemble.text"] = text
        for k, v in ref.score(model, images, text, cfg, ref.Params()).items():
            expected[f"ensemble.{k}"] = torch.as_tensor(np.asarray(v, dtype=np.float32))

    meta = {"preset": args.preset, "seed": str(args.seed), "image_size": str(p["side"]),
            "readout": json.dumps(p["readout"]), "dpam_start": str(p["dpam_start"]),
            "images": json.dumps(IMAGES[:p["images"]])}
    save_file({k: v.contiguous() for k, v in expected.items()}, str(out / "expected.safetensors"),
              metadata=meta)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>10}  {f.relative_to(REPO)}")


if __name__ == "__main__":
    main()
