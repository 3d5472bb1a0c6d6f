"""Full-shape parity fixtures: ViT-B/16 at S = 512 and ViT-L/14@336 at S = 518, with random weights
that the engine draws itself from a seed (`headclip::prng`, `clip/random.rs`) and that are drawn
here again, bit for bit, so that no weights need to be stored.

    reference/regen.sh full                 # both fixtures into crates/headclip/tests/fixtures/full

Each fixture holds the reference's outputs for one image, in fp32: the text features, the global
feature, a few tokens' features per read-out layer, the per-layer and smoothed maps at sampled
pixels, and the scores; the input image (small, uint8, repeated up to S×S); and a sha256 per
group of weight tensors (`headclip.digests`), which the Rust test compares with what the engine
drew. Regenerating refuses to change those digests unless told `--new-weights`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import headclip_ref as ref

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
OUT = REPO / "crates/headclip/tests/fixtures/full"
IMAGE = "mvtec_bottle/bottle/test/broken_large/000.png"

# ---------------------------------------------------------------- the engine's generator

GAMMA = 0x9E3779B97F4A7C15
MASK = 2**64 - 1
SQRT_3 = 1.7320508075688772
LOGIT_SCALE = 2.659260036932778
CHUNK = 1 << 22


def mix(z):
    """SplitMix64's output function on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, stream: int) -> np.uint64:
    return mix(np.array([(seed + (stream + 1) * GAMMA) & MASK], dtype=np.uint64))[0]


def normals(key: np.uint64, start: int, n: int) -> np.ndarray:
    """Values start..start+n of a stream: four 16-bit lanes of one SplitMix64 word, summed,
    centred and scaled to variance 1 (float64)."""
    with np.errstate(over="ignore"):
        index = np.arange(start + 1, start + n + 1, dtype=np.uint64)
        word = mix(key + index * np.uint64(GAMMA))
    lanes = sum((word >> np.uint64(16 * k)) & np.uint64(0xFFFF) for k in range(4))
    return (lanes.astype(np.float64) / 65536.0 - 2.0) * SQRT_3


def draw(seed: int, stream: int, shape: tuple, mean: float, std: float) -> np.ndarray:
    """mean + std·z in float64, rounded to float32, as `seeded_tensor` does."""
    key, n = stream_key(seed, stream), int(np.prod(shape))
    parts = [(mean + std * normals(key, s, min(CHUNK, n - s))).astype(np.float32)
             for s in range(0, n, CHUNK)]
    return np.concatenate(parts).reshape(shape)


# ---------------------------------------------------------------- random checkpoints

SHAPES = {
    "ViT-B-16": dict(embed=512, v_layers=12, v_width=768, patch=16, res=224, t_width=512,
                     t_layers=12),
    "ViT-L-14-336": dict(embed=768, v_layers=24, v_width=1024, patch=14, res=336, t_width=768,
                         t_layers=12),
}
NORM_GAIN = (1.0, 0.05)
BIAS = (0.0, 0.05)


def inverse_sqrt(x: int) -> float:
    return 1.0 / np.sqrt(np.float64(x))


def block_specs(prefix: str, w: int, layers: int) -> list:
    attn, out, fc = ((0.0, inverse_sqrt(w)), (0.0, inverse_sqrt(2 * layers * w)),
                     (0.0, inverse_sqrt(2 * w)))
    return [(f"{prefix}.{k}", shape, init) for k, shape, init in [
        ("ln_1.weight", (w,), NORM_GAIN), ("ln_1.bias", (w,), BIAS),
        ("attn.in_proj_weight", (3 * w, w), attn), ("attn.in_proj_bias", (3 * w,), BIAS),
        ("attn.out_proj.weight", (w, w), out), ("attn.out_proj.bias", (w,), BIAS),
        ("ln_2.weight", (w,), NORM_GAIN), ("ln_2.bias", (w,), BIAS),
        ("mlp.c_fc.weight", (4 * w, w), fc), ("mlp.c_fc.bias", (4 * w,), BIAS),
        ("mlp.c_proj.weight", (w, 4 * w), out), ("mlp.c_proj.bias", (w,), BIAS),
    ]]


def clip_specs(s: dict) -> list:
    """(name, shape, (mean, std)) in stream order, as `random_clip_specs`."""
    w, p, g, tw = s["v_width"], s["patch"], s["res"] // s["patch"], s["t_width"]
    specs = [("visual.conv1.weight", (w, 3, p, p), (0.0, 0.02)),
             ("visual.class_embedding", (w,), (0.0, inverse_sqrt(w))),
             ("visual.positional_embedding", (g * g + 1, w), (0.0, inverse_sqrt(w))),
             ("visual.ln_pre.weight", (w,), NORM_GAIN), ("visual.ln_pre.bias", (w,), BIAS)]
    for i in range(s["v_layers"]):
        specs += block_specs(f"visual.transformer.resblocks.{i}", w, s["v_layers"])
    specs += [("visual.ln_post.weight", (w,), NORM_GAIN), ("visual.ln_post.bias", (w,), BIAS),
              ("visual.proj", (w, s["embed"]), (0.0, inverse_sqrt(w))),
              ("token_embedding.weight", (49408, tw), (0.0, 0.02)),
              ("positional_embedding", (77, tw), (0.0, 0.01))]
    for i in range(s["t_layers"]):
        specs += block_specs(f"transformer.resblocks.{i}", tw, s["t_layers"])
    specs += [("ln_final.weight", (tw,), NORM_GAIN), ("ln_final.bias", (tw,), BIAS),
              ("text_projection", (tw, s["embed"]), (0.0, inverse_sqrt(tw)))]
    return specs


def random_clip(s: dict, seed: int) -> dict:
    """The engine's `random_clip`: fp16 tensors, each value rounded f64 → f32 → f16."""
    sd = {name: torch.from_numpy(draw(seed, i, shape, *init).astype(np.float16))
          for i, (name, shape, init) in enumerate(clip_specs(s))}
    sd["logit_scale"] = torch.tensor(np.float32(LOGIT_SCALE)).half()
    return sd


def digest_group(name: str) -> str:
    if "resblocks." in name:
        head, rest = name.split("resblocks.", 1)
        return f"{head}resblocks.{rest.split('.', 1)[0]}"
    return "visual" if name.startswith("visual.") else "text"


def digests(sd: dict) -> dict:
    """sha256 of each group's stored bytes in order, as `random_clip_digests`."""
    hashers = {}
    for name, t in sd.items():
        hashers.setdefault(digest_group(name), hashlib.sha256()).update(t.numpy().tobytes())
    return {g: h.hexdigest() for g, h in sorted(hashers.items())}


# ---------------------------------------------------------------- learned-style parameters


def random_params(s: dict, cfg: ref.Config, seed: int) -> ref.Params:
    """Prompts N(0, 0.2²), θ N(0, 0.8²), U N(0, 0.5²), from streams 0, 1, 2–9, 10, 11."""
    w, heads = s["t_width"], s["v_width"] // 64
    rows = s["v_layers"] - cfg.dpam_start + 1
    t = lambda stream, shape, std: torch.from_numpy(draw(seed, stream, shape, 0.0, std))
    return ref.Params(
        ctx_pos=t(0, (12, w), 0.2),
        ctx_neg=t(1, (12, w), 0.2),
        deep=[t(2 + i, (4, w), 0.2) for i in range(8)],
        theta=t(10, (rows, heads), 0.8),
        u=t(11, (rows, heads, s["v_width"]), 0.5) if cfg.lhw_dynamic else None,
    )


# ---------------------------------------------------------------- fixtures

CASES = {
    "vit-b-16": dict(shape="ViT-B-16", side=512, repeat=8, seed=2026, params_seed=2027,
                     config=ref.Config(readout=[3, 6, 9, 12], dpam_start=4)),
    "vit-l-14-336": dict(shape="ViT-L-14-336", side=518, repeat=7, seed=2028, params_seed=2029,
                         config=ref.Config(readout=[6, 12, 18, 24], dpam_start=6,
                                           lhw_dynamic=True)),
}
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])
# Maps are compared at every SAMPLE_STRIDE-th pixel from SAMPLE_OFFSET, off the patch grid.
SAMPLE_OFFSET, SAMPLE_STRIDE = 5, 16


def small_image(side: int) -> torch.Tensor:
    """The bottle image at side×side, uint8 [3, side, side]."""
    im = Image.open(SHARED / IMAGE).convert("RGB").resize((side, side), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())


def model_input(small: torch.Tensor, repeat: int) -> torch.Tensor:
    """Each pixel repeated into a repeat×repeat block, normalised as CLIP's pre-processing. [1, 3, S, S]"""
    x = small.float().repeat_interleave(repeat, 1).repeat_interleave(repeat, 2) / 255.0
    return ((x - MEAN[:, None, None]) / STD[:, None, None])[None]


def sampled_tokens(grid: int) -> torch.Tensor:
    """CLS, the four corner patches and the centre one."""
    n = grid * grid
    return torch.tensor([0, 1, grid, 1 + (grid // 2) * grid + grid // 2, n - grid + 1, n])


def outputs(model, images, cfg: ref.Config, params: ref.Params, grid: int) -> dict:
    text = ref.encode_prompted_text(model, params)
    _, feats = ref.encode_image(model, images, cfg, params)
    tokens = sampled_tokens(grid)
    out = {"text": text, "tokens": tokens}
    for layer, f in feats.items():
        out[f"features.{layer}"] = f[0, tokens]
    side = images.shape[-1]
    samples = torch.arange(SAMPLE_OFFSET, side, SAMPLE_STRIDE)
    out["samples"] = samples
    scores = {k: torch.as_tensor(np.asarray(v, dtype=np.float32))
              for k, v in ref.score(model, images, text, cfg, params).items()}
    out["global_feature"] = scores["global_feature"]
    out["layer_maps"] = scores["layer_maps"][0][:, samples][:, :, samples]
    out["map"] = scores["map"][0][samples][:, samples]
    for k in ("global_score", "pixel_score", "score"):
        out[k] = scores[k]
    return out


def stored_digests(path: Path) -> dict | None:
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["headclip.digests"])


def generate(name: str, case: dict, new_weights: bool):
    path = OUT / f"{name}.safetensors"
    s = SHAPES[case["shape"]]
    sd = random_clip(s, case["seed"])
    drawn = digests(sd)
    before = stored_digests(path)
    if before is not None and before != drawn and not new_weights:
        changed = sorted(g for g in drawn if before.get(g) != drawn[g])
        raise SystemExit(f"{name}: the generator now draws other weights ({changed[:3]}…); the "
                         "engine's test would fail. Pass --new-weights if that is intended.")
    cfg = case["config"]
    model = ref.load_clip(sd)
    del sd
    params = random_params(s, cfg, case["params_seed"])
    small = small_image(case["side"] // case["repeat"])
    with torch.no_grad():
        out = outputs(model, model_input(small, case["repeat"]), cfg, params,
                      case["side"] // s["patch"])
    out["image"] = small
    meta = {"shape": case["shape"], "seed": str(case["seed"]),
            "params_seed": str(case["params_seed"]), "image": IMAGE,
            "repeat": str(case["repeat"]), "headclip.config": json.dumps(cfg.to_json(case["side"])),
            "headclip.digests": json.dumps(drawn)}
    save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata=meta)
    print(f"{path.stat().st_size:>10}  {path.relative_to(REPO)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*", default=sorted(CASES), choices=sorted(CASES))
    ap.add_argument("--new-weights", action="store_true",
                    help="accept weight digests that differ from the stored fixtures'")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for name in args.cases:
        generate(name, CASES[name], args.new_weights)


if __name__ == "__main__":
    main()
