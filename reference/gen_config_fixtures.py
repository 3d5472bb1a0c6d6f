"""Tiny checkpoints that carry their own config, and the reference's outputs for them.

    reference/regen.sh      # also runs this script

Each case is a folder as its library ships it: OpenCLIP's `open_clip_model.safetensors` beside
`open_clip_config.json`, or Hugging Face's `model.safetensors` beside `config.json` (and
`preprocessor_config.json`). The reference model is then built by the library itself from that
folder (`open_clip.create_model("local-dir:…")`, `transformers.CLIPModel.from_pretrained`), so
head widths, activations, defaults of missing keys and normalisation constants are the library's,
not ours. HeadCLIP's own computation (`headclip_ref`) runs on top of the library's modules.

Cases (crates/headclip/tests/fixtures/<name>):
  openclip_gelu_hw80   vision heads 80 wide, no `quick_gelu` key (so exact GELU), ImageNet's
                       mean and std in `preprocess_cfg`
  openclip_quickgelu   `quick_gelu: true`, no `head_width` (so 64), no `preprocess_cfg`
  hf_gelu              vision `hidden_act: gelu` with 3 heads of 32; the text config names no
                       `hidden_act` (so transformers' default, quick_gelu); mean and std 0.5 in
                       `preprocessor_config.json`
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import headclip_ref as ref
from gen_fixtures import IMAGES, SHARED, save_params, training_masks, training_step

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates/headclip/tests/fixtures"

SIDE = 96
READOUT = [1, 2]
DPAM_START = 2
DEEP_PROMPTS = 2
SEED = 211

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 12, "heads": 2, "layers": 3}

OPENCLIP_CASES = {
    "openclip_gelu_hw80": {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 160, "head_width": 80,
                           "patch_size": 16},
            "text_cfg": TEXT_CFG,
        },
        "preprocess_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    },
    "openclip_quickgelu": {
        "model_cfg": {
            "embed_dim": 16,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
            "text_cfg": TEXT_CFG,
        },
    },
}

HF_CASE = "hf_gelu"
HF_CONFIG = {
    "architectures": ["CLIPModel"],
    "model_type": "clip",
    "projection_dim": 16,
    "vision_config": {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 2,
                      "num_attention_heads": 3, "image_size": 64, "patch_size": 16,
                      "hidden_act": "gelu", "projection_dim": 16},
    "text_config": {"hidden_size": 12, "intermediate_size": 48, "num_hidden_layers": 3,
                    "num_attention_heads": 2, "max_position_embeddings": 77,
                    "vocab_size": 49408, "projection_dim": 16},
}
HF_PREPROCESSOR = {"image_processor_type": "CLIPImageProcessor",
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def perturbed_fp16(sd: dict) -> dict:
    """Random init leaves norms at 1/0 and biases at 0: perturb every 1-D tensor so that each
    parameter reaches the outputs, then store in fp16 as released checkpoints are."""
    out = {}
    for k, v in sd.items():
        if v.dim() == 1 and v.dtype.is_floating_point:
            v = v + 0.05 * torch.randn_like(v)
        out[k] = v.half().contiguous()
    return out


# ---------------------------------------------------------------- the library's models, viewed as
# the OpenAI layout headclip_ref reads (blocks take [N, B, D], as OpenAI's do)


class LndBlock:
    """A library block called as OpenAI's: input and output [N, B, D]."""

    def __init__(self, ln_1, attn, ln_2, mlp, run):
        self.ln_1, self.attn, self.ln_2, self.mlp, self._run = ln_1, attn, ln_2, mlp, run

    def __call__(self, x):
        return self._run(x.permute(1, 0, 2)).permute(1, 0, 2)


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)


def openclip_view(model):
    def wrap(block, causal: bool):
        def run(x):
            mask = causal_mask(x.shape[1]) if causal else None
            return block(x, attn_mask=mask)
        return LndBlock(block.ln_1, block.attn, block.ln_2, block.mlp, run)

    view = SimpleNamespace(
        token_embedding=model.token_embedding, positional_embedding=model.positional_embedding,
        ln_final=model.ln_final, text_projection=model.text_projection,
        encode_text=model.encode_text, encode_image=model.encode_image,
        transformer=SimpleNamespace(resblocks=[wrap(b, True) for b in model.transformer.resblocks]),
    )
    v = model.visual
    view.visual = SimpleNamespace(
        conv1=v.conv1, class_embedding=v.class_embedding, positional_embedding=v.positional_embedding,
        ln_pre=v.ln_pre, ln_post=v.ln_post, proj=v.proj,
        transformer=SimpleNamespace(resblocks=[wrap(b, False) for b in v.transformer.resblocks]))
    return view


def hf_view(model):
    def wrap(layer, causal: bool):
        attn = layer.self_attn
        fused = SimpleNamespace(
            num_heads=attn.num_heads, out_proj=attn.out_proj,
            in_proj_weight=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
            in_proj_bias=torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))

        def run(x):
            mask = causal_mask(x.shape[1])[None, None].expand(x.shape[0], 1, -1, -1) if causal else None
            out = layer(x, attention_mask=mask)
            return out[0] if isinstance(out, tuple) else out
        return LndBlock(layer.layer_norm1, fused, layer.layer_norm2, layer.mlp, run)

    def encode_text(ids):
        out = model.get_text_features(input_ids=ids)
        return getattr(out, "pooler_output", out)

    def encode_image(pixels):
        out = model.get_image_features(pixel_values=pixels)
        return getattr(out, "pooler_output", out)

    t, v = model.text_model, model.vision_model
    view = SimpleNamespace(
        token_embedding=t.embeddings.token_embedding,
        positional_embedding=t.embeddings.position_embedding.weight,
        ln_final=t.final_layer_norm, text_projection=model.text_projection.weight.T,
        encode_text=encode_text, encode_image=encode_image,
        transformer=SimpleNamespace(resblocks=[wrap(l, True) for l in t.encoder.layers]))
    view.visual = SimpleNamespace(
        conv1=v.embeddings.patch_embedding, class_embedding=v.embeddings.class_embedding,
        positional_embedding=v.embeddings.position_embedding.weight, ln_pre=v.pre_layrnorm,
        ln_post=v.post_layernorm, proj=model.visual_projection.weight.T,
        transformer=SimpleNamespace(resblocks=[wrap(l, False) for l in v.encoder.layers]))
    return view


# ---------------------------------------------------------------- the cases


def write_openclip(name: str, case: dict, seed: int):
    import open_clip

    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    fresh = open_clip.model.CLIP(**case["model_cfg"])
    save_file(perturbed_fp16(fresh.state_dict()), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(case, indent=2) + "\n")
    model = open_clip.create_model(f"local-dir:{folder}").float().eval()
    pre = open_clip.get_model_preprocess_cfg(model)
    return folder, openclip_view(model), pre["mean"], pre["std"]


def write_hugging_face(seed: int):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = OUT / HF_CASE
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    fresh = CLIPModel(CLIPConfig(**{k: v for k, v in HF_CONFIG.items() if k != "architectures"}))
    sd = {k: v for k, v in fresh.state_dict().items() if not k.endswith("position_ids")}
    save_file(perturbed_fp16(sd), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(HF_CONFIG, indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(HF_PREPROCESSOR, indent=2) + "\n")
    model = CLIPModel.from_pretrained(folder, attn_implementation="eager").float().eval()
    assert model.config.text_config.hidden_act == "quick_gelu", "transformers' default changed"
    processor = CLIPImageProcessor.from_pretrained(folder)
    return folder, hf_view(model), processor.image_mean, processor.image_std


def resized_pixels(count: int) -> torch.Tensor:
    """The fixture images resized to S×S by PIL's bicubic, as 8-bit RGB: [B, S, S, 3]."""
    out = []
    for rel in IMAGES[:count]:
        im = Image.open(SHARED / rel).convert("RGB").resize((SIDE, SIDE), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()))
    return torch.stack(out)


def normalized(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=torch.float32)
    std = torch.tensor(std, dtype=torch.float32)
    x = (pixels.float() / 255.0 - mean) / std
    return x.permute(0, 3, 1, 2).contiguous()


def random_params(view, seed: int) -> ref.Params:
    g = torch.Generator().manual_seed(seed)
    w = view.token_embedding.weight.shape[1]
    blocks = view.visual.transformer.resblocks
    heads, width = blocks[0].attn.num_heads, view.visual.conv1.weight.shape[0]
    rows = len(blocks) - DPAM_START + 1
    return ref.Params(
        ctx_pos=0.2 * torch.randn(12, w, generator=g),
        ctx_neg=0.2 * torch.randn(12, w, generator=g),
        deep=[0.2 * torch.randn(4, w, generator=g) for _ in range(DEEP_PROMPTS)],
        theta=0.8 * torch.randn(rows, heads, generator=g),
        u=0.5 * torch.randn(rows, heads, width, generator=g),
    )


def check_view(view, images: torch.Tensor):
    """The view, run as headclip_ref runs it, gives the library's own features: the image
    feature (with ln_post, unit head weights, at the pretrained side) and the text feature."""
    cfg = ref.Config(readout=READOUT, dpam_start=DPAM_START, global_ln_post=True)
    ids = ref.template_tokens()
    side = view.visual.conv1.weight.shape[-1] * round(math.sqrt(view.visual.positional_embedding.shape[0] - 1))
    small = F.interpolate(images, size=(side, side), mode="bilinear")
    with torch.no_grad():
        g, _ = ref.encode_image(view, small, cfg, ref.Params())
        library_g = F.normalize(view.encode_image(small), dim=-1)
        x = view.token_embedding(ids) + view.positional_embedding
        for block in view.transformer.resblocks:
            x = block(x.permute(1, 0, 2)).permute(1, 0, 2)
        t = view.ln_final(x)[torch.arange(len(ids)), ids.argmax(-1)] @ view.text_projection
        library_t = view.encode_text(ids)
    assert torch.allclose(g, library_g, atol=1e-5), (g - library_g).abs().max()
    assert torch.allclose(t, library_t, atol=1e-5), (t - library_t).abs().max()


def expected_outputs(folder: Path, view, mean, std, seed: int):
    cfg = ref.Config(readout=READOUT, dpam_start=DPAM_START, lhw_dynamic=True, jas_lambda=0.3,
                     jas_top_fraction=0.05)
    pixels = resized_pixels(2)
    images = normalized(pixels, mean, std)
    check_view(view, images)
    params = random_params(view, seed)
    save_params(params, cfg, SIDE, folder / "params_dynamic.safetensors")
    out = {"pixels": pixels, "images": images, "mean": torch.tensor(mean, dtype=torch.float32),
           "std": torch.tensor(std, dtype=torch.float32)}
    with torch.no_grad():
        text = ref.encode_prompted_text(view, params)
        out["dynamic.text"] = text
        for k, v in ref.score(view, images, text, cfg, params).items():
            out[f"dynamic.{k}"] = torch.as_tensor(np.asarray(v, dtype=np.float32))
        out["ensemble.text"] = ref.encode_ensemble_text(view)
    out["train.labels"] = torch.tensor([1, 0])
    out["train.masks"] = training_masks(SIDE)
    step = training_step(view, images, out["train.labels"], out["train.masks"], cfg,
                         random_params(view, seed))
    out.update({f"train.dynamic.{k}": v for k, v in step.items()})
    meta = {"image_size": str(SIDE), "readout": json.dumps(READOUT),
            "dpam_start": str(DPAM_START), "images": json.dumps(IMAGES[:2])}
    save_file({k: v.contiguous() for k, v in out.items()}, str(folder / "expected.safetensors"),
              metadata=meta)


def main():
    torch.set_num_threads(2)
    cases = []
    for i, (name, case) in enumerate(OPENCLIP_CASES.items()):
        cases.append(write_openclip(name, case, SEED + i))
    cases.append(write_hugging_face(SEED + len(cases)))
    for i, (folder, view, mean, std) in enumerate(cases):
        expected_outputs(folder, view, mean, std, SEED + 10 + i)
        for f in sorted(folder.iterdir()):
            print(f"{f.stat().st_size:>10}  {f.relative_to(REPO)}")


if __name__ == "__main__":
    main()
