"""Few-shot and class-name parity fixtures for the tiny model, beside (never replacing) the values
of gen_fixtures.py: reads its committed checkpoint, parameters and input images, and writes
crates/headclip/tests/fixtures/tiny/fewshot.safetensors.

    .venv-reference/bin/python reference/gen_fewshot_fixtures.py     (run by reference/regen.sh)

Cases: the learned "learned" parameters with β = 0.5 (default) and the training-free ensemble
with the class name "bottle" and β = 0.7, both with K = 3 references (MVTec bottle train/good
000–002, pre-processed as the test images are); and the ensemble's text features for the class
name "metal_nut" (read "metal nut").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import headclip_ref as ref
from gen_fixtures import PRESETS, load_image

TINY = PRESETS["tiny"]
OUT: Path = TINY["out"]
REFERENCES = [f"mvtec_bottle/bottle/train/good/{i:03d}.png" for i in range(3)]


def load_params(path: Path) -> tuple[ref.Params, ref.Config]:
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["headclip.config"])
    deep = [tensors[f"prompt.deep.{i}"] for i in range(sum(k.startswith("prompt.deep.") for k in tensors))]
    params = ref.Params(ctx_pos=tensors["prompt.ctx_pos"], ctx_neg=tensors["prompt.ctx_neg"],
                        deep=deep, theta=tensors["lhw.theta"], u=tensors.get("lhw.u"))
    config = ref.Config(readout=cfg["readout"], dpam_start=cfg["dpam_start"],
                        lhw_form=cfg["lhw_form"], lhw_paths=cfg["lhw_paths"],
                        lhw_dynamic=cfg["lhw_dynamic"], jas_lambda=cfg["jas_lambda"],
                        jas_top_fraction=cfg["jas_top_fraction"],
                        global_ln_post=cfg["global_ln_post"])
    return params, config


def main():
    torch.set_num_threads(2)
    model = ref.load_clip(load_file(str(OUT / "clip_openai.safetensors")))
    images = load_file(str(OUT / "expected.safetensors"))["images"]
    references = torch.stack([load_image(rel, TINY["side"]) for rel in REFERENCES])
    out = {"references": references}
    with torch.no_grad():
        params, cfg = load_params(OUT / "params_learned.safetensors")
        cases = {
            "learned": (params, cfg, ref.encode_prompted_text(model, params), 0.5),
            "ensemble": (ref.Params(), ref.Config(readout=TINY["readout"], dpam_start=TINY["dpam_start"]),
                         ref.encode_ensemble_text(model, ref.object_word("bottle")), 0.7),
        }
        for name, (params, cfg, text, beta) in cases.items():
            bank = ref.memory_bank(model, references, cfg, params)
            for l, b in bank.items():
                out[f"{name}.bank.layer{l}"] = b
            out[f"{name}.text"] = text
            out[f"{name}.beta"] = torch.tensor([beta])
            for k, v in ref.score(model, images, text, cfg, params, bank, beta).items():
                out[f"{name}.{k}"] = torch.as_tensor(np.asarray(v, dtype=np.float32))
        out["class.metal_nut.text"] = ref.encode_ensemble_text(model, ref.object_word("metal_nut"))
    meta = {"references": json.dumps(REFERENCES), "class_names": json.dumps({"ensemble": "bottle"})}
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT / "fewshot.safetensors"),
              metadata=meta)
    print(f"{(OUT / 'fewshot.safetensors').stat().st_size:>10}  fewshot.safetensors")


if __name__ == "__main__":
    main()
