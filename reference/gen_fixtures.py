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
import torch.nn.functional as F
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


def to_hugging_face(sd: dict) -> dict:
    """OpenAI's key layout → Hugging Face `transformers` CLIPModel's (q/k/v split, projections
    as Linear weights). Checked against transformers' own CLIPModel in check_hugging_face."""
    out = {}
    ren = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    block = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
             "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
    for k, v in sd.items():
        if k in ren:
            out[ren[k]] = v
        elif k == "visual.proj":
            out["visual_projection.weight"] = v.T.contiguous()
        elif k == "text_projection":
            out["text_projection.weight"] = v.T.contiguous()
        else:
            tower, rest = ("vision_model", k[len("visual.transformer.resblocks."):]) \
                if k.startswith("visual.") else ("text_model", k[len("transformer.resblocks."):])
            i, name = rest.split(".", 1)
            prefix = f"{tower}.encoder.layers.{i}"
            if name.startswith("attn.in_proj_"):
                part = name[len("attn.in_proj_"):]
                for proj, chunk in zip("qkv", v.chunk(3, dim=0)):
                    out[f"{prefix}.self_attn.{proj}_proj.{part}"] = chunk.contiguous()
                continue
            for a, b in block.items():
                if name.startswith(a + "."):
                    out[f"{prefix}.{b}{name[len(a):]}"] = v
                    break
            else:
                raise KeyError(k)
    return out


def check_hugging_face(hf: dict, model, p: dict, images: torch.Tensor):
    """Loads the converted weights into transformers' CLIPModel and compares its features with
    OpenAI's model, so the key mapping is proven by transformers' own code."""
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError:
        print("transformers not installed: Hugging Face layout not cross-checked")
        return
    config = CLIPConfig(
        text_config=dict(hidden_size=p["t_width"], intermediate_size=4 * p["t_width"],
                         num_hidden_layers=p["t_layers"], num_attention_heads=p["t_width"] // 64,
                         max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
                         projection_dim=p["embed"], eos_token_id=49407),
        vision_config=dict(hidden_size=p["v_width"], intermediate_size=4 * p["v_width"],
                           num_hidden_layers=p["v_layers"], num_attention_heads=p["v_width"] // 64,
                           image_size=p["res"], patch_size=p["patch"], hidden_act="quick_gelu",
                           projection_dim=p["embed"]),
        projection_dim=p["embed"])
    hf_model = CLIPModel(config).eval()
    missing, unexpected = hf_model.load_state_dict({k: v.float() for k, v in hf.items()}, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    ids = ref.template_tokens()
    with torch.no_grad():
        small = F.interpolate(images, size=(p["res"], p["res"]), mode="bilinear")
        a = hf_model.get_image_features(pixel_values=small)
        b = model.encode_image(small)
        c = hf_model.get_text_features(input_ids=ids)
        d = model.encode_text(ids)
    a, c = (getattr(x, "pooler_output", x) for x in (a, c))
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert torch.allclose(c, d, atol=1e-4), (c - d).abs().max()
    print("Hugging Face layout checked against transformers.CLIPModel")


def load_image(rel: str, side: int) -> torch.Tensor:
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    im = Image.open(SHARED / rel).convert("RGB").resize((side, side), Image.BICUBIC)
    x = (np.asarray(im, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def load_images(side: int, count: int) -> torch.Tensor:
    return torch.stack([load_image(rel, side) for rel in IMAGES[:count]])


def training_masks(side: int) -> torch.Tensor:
    """Masks for the two fixture images: the real MVTec mask of the broken bottle, none for the
    good one."""
    m = Image.open(SHARED / "mvtec_bottle/bottle/ground_truth/broken_large/000_mask.png").convert("L")
    m = (np.asarray(m) >= 128).astype(np.uint8) * 255
    m = Image.fromarray(m).resize((side, side), Image.BILINEAR)
    m = torch.from_numpy((np.asarray(m) > 127).astype(np.float32))
    return torch.stack([m, torch.zeros_like(m)])


def training_step(model, images, labels, masks, cfg, params, joint_weight: float = 0.0,
                  mask_known=None) -> dict:
    """Loss terms, gradients of every trainable tensor, and the parameters after one Adam step
    (lr 1e-3, betas 0.5/0.999)."""
    out = {}
    named = ref.trainable(params)
    for t in named.values():
        t.requires_grad_(True)
    loss = ref.training_loss(model, images, labels, masks, cfg, params, joint_weight, mask_known)
    loss["total"].backward()
    for k, v in loss.items():
        out[f"loss.{k}"] = v.detach().reshape(1)
    for k, t in named.items():
        out[f"grad.{k}"] = t.grad.detach().clone()
    optimizer = torch.optim.Adam(list(named.values()), lr=1e-3, betas=(0.5, 0.999))
    optimizer.step()
    for k, t in named.items():
        out[f"after.{k}"] = t.detach().clone()
    return out


# The joint-score loss's case: the "learned" case's parameters, with the term weighted so.
JOINT_WEIGHT = 0.7


def training_fixture(model, p: dict, images: torch.Tensor, cases: dict, seed: int) -> dict:
    """One training step per head-weight variant, and one with the joint-score loss."""
    out = {"train.masks": training_masks(p["side"]), "train.labels": torch.tensor([1, 0])}
    labels, masks = out["train.labels"], out["train.masks"]
    for i, (name, cfg) in enumerate(cases.items()):
        if name == "identity":
            continue
        step = training_step(model, images, labels, masks, cfg, random_params(p, cfg, seed + 1 + i))
        out.update({f"train.{name}.{k}": v for k, v in step.items()})
    learned = list(cases).index("learned")
    cfg = cases["learned"]
    step = training_step(model, images, labels, masks, cfg,
                         random_params(p, cfg, seed + 1 + learned), JOINT_WEIGHT)
    out.update({f"train.joint.{k}": v for k, v in step.items()})
    out["train.joint.weight"] = torch.tensor([JOINT_WEIGHT])
    out.update(mixed_data_fixture(model, p, images, cfg, random_params(p, cfg, seed + 1 + learned)))
    return out


# An anomalous image of an image-level set (no mask), added to the fixture batch for the
# mixed-data case.
IMAGE_LEVEL_IMAGE = "mvtec_bottle/bottle/test/broken_small/000.png"


def mixed_data_fixture(model, p: dict, images: torch.Tensor, cfg, params) -> dict:
    """One step on a mixed batch: the masked anomalous image, the normal image of the same
    (masked) set, and an anomalous image without a mask."""
    side = p["side"]
    third = load_image(IMAGE_LEVEL_IMAGE, side)
    batch = torch.cat([images, third[None]])
    labels = torch.tensor([1, 0, 1])
    masks = torch.cat([training_masks(side), torch.zeros(1, side, side)])
    mask_known = torch.tensor([True, True, False])
    step = training_step(model, batch, labels, masks, cfg, params, mask_known=mask_known)
    out = {f"train.mixed.{k}": v for k, v in step.items()}
    out.update({"train.mixed.images": batch, "train.mixed.labels": labels,
                "train.mixed.masks": masks, "train.mixed.mask_known": mask_known.to(torch.uint8)})
    return out


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
    hf = to_hugging_face(sd)
    check_hugging_face(hf, model, p, images)
    if args.preset == "tiny":
        save_file(hf, str(out / "clip_hf.safetensors"))
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

    if args.preset == "tiny":
        expected.update(training_fixture(model, p, images, cases, args.seed))

    meta = {"preset": args.preset, "seed": str(args.seed), "image_size": str(p["side"]),
            "readout": json.dumps(p["readout"]), "dpam_start": str(p["dpam_start"]),
            "images": json.dumps(IMAGES[:p["images"]])}
    save_file({k: v.contiguous() for k, v in expected.items()}, str(out / "expected.safetensors"),
              metadata=meta)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>10}  {f.relative_to(REPO)}")


if __name__ == "__main__":
    main()
