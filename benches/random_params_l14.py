"""Writes ViT-L/14@336-shaped random HeadCLIP parameters (learned prompts, head weights) that
record the sha256 of the given CLIP weights, for the model-load benchmark (benches/load.sh).

    python benches/random_params_l14.py WEIGHTS OUT
"""
import sys, json, hashlib, torch
from safetensors.torch import save_file
weights, out = sys.argv[1:3]
h = hashlib.sha256()
with open(weights, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
        h.update(chunk)
g = torch.Generator().manual_seed(0)
t = {"prompt.ctx_pos": 0.02 * torch.randn(12, 768, generator=g),
     "prompt.ctx_neg": 0.02 * torch.randn(12, 768, generator=g),
     "lhw.theta": 0.1 * torch.randn(19, 16, generator=g)}
for i in range(8):
    t[f"prompt.deep.{i}"] = 0.02 * torch.randn(4, 768, generator=g)
config = {"readout": [6, 12, 18, 24], "dpam_start": 6, "lhw_form": "softmax", "lhw_paths": "vv",
          "lhw_dynamic": False, "jas_lambda": 0.5, "jas_top_fraction": 0.01, "image_size": 518,
          "global_ln_post": False, "clip_sha256": h.hexdigest()}
save_file(t, out, metadata={"headclip.config": json.dumps(config)})
