"""PyTorch reference of HeadCLIP inference, the oracle for the Rust engine's parity tests.

Plain CLIP is OpenAI's published model code (the `clip` module of the `clip-anytorch` package):
its modules hold the weights, its `encode_text` encodes the training-free prompt ensemble and its
`ResidualAttentionBlock` runs every ordinary block. What HeadCLIP adds (the value-value path,
head weights, learned prompts, maps and the joint score) is written out here, plainly, following
`shared/docs/headclip-spec.md`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

import clip
from clip.model import build_model

TAU = 0.07
NORMAL_TEMPLATE = "X X X X X X X X X X X X object."
ABNORMAL_TEMPLATE = "X X X X X X X X X X X X damaged object."

NORMAL_STATES = ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
                 "{} without defect", "{} without damage"]
ABNORMAL_STATES = ["damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"]
TEMPLATES = [
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.",
    "a photo of my {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "a low resolution photo of a {}.", "a photo of a large {}.",
    "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
]


@dataclass
class Config:
    readout: list[int]
    dpam_start: int
    lhw_form: str = "softmax"  # softmax | sigmoid | identity
    lhw_paths: str = "vv"  # vv | both
    lhw_dynamic: bool = False
    jas_lambda: float = 0.5
    jas_top_fraction: float = 0.01
    global_ln_post: bool = False
    sigma: float = 4.0

    def to_json(self, image_size: int) -> dict:
        return {
            "readout": self.readout, "dpam_start": self.dpam_start, "lhw_form": self.lhw_form,
            "lhw_paths": self.lhw_paths, "lhw_dynamic": self.lhw_dynamic,
            "jas_lambda": self.jas_lambda, "jas_top_fraction": self.jas_top_fraction,
            "image_size": image_size, "global_ln_post": self.global_ln_post,
        }


@dataclass
class Params:
    """Learned HeadCLIP tensors; `None` prompts mean the training-free ensemble."""
    ctx_pos: torch.Tensor | None = None
    ctx_neg: torch.Tensor | None = None
    deep: list[torch.Tensor] = field(default_factory=list)
    theta: torch.Tensor | None = None  # [L - l0 + 1, H]
    u: torch.Tensor | None = None  # [L - l0 + 1, H, D]


def load_clip(state_dict: dict) -> torch.nn.Module:
    return build_model({k: v.clone() for k, v in state_dict.items()}).float().eval()


def template_tokens() -> torch.Tensor:
    return clip.tokenize([NORMAL_TEMPLATE, ABNORMAL_TEMPLATE])  # [2, 77]


# ---------------------------------------------------------------- text


def encode_prompted_text(model, params: Params) -> torch.Tensor:
    """Learned prompts: [t_n, t_a], each L2-normalised. [2, E]"""
    ids = template_tokens().to(model.positional_embedding.device)
    x = model.token_embedding(ids).clone()  # [2, 77, W]
    x[0, 1:13] = params.ctx_pos
    x[1, 1:13] = params.ctx_neg
    x = x + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks, start=1):
        if 2 <= i <= len(params.deep) + 1:
            x = x.clone()
            x[:, 1:5] = params.deep[i - 2]
        x = block(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x)
    t = x[torch.arange(2), ids.argmax(dim=-1)] @ model.text_projection
    return F.normalize(t, dim=-1)


def encode_ensemble_text(model, object_word: str = "object") -> torch.Tensor:
    """Training-free WinCLIP prompt ensemble: [t_n, t_a]. [2, E]"""
    sides = []
    for states in (NORMAL_STATES, ABNORMAL_STATES):
        sentences = [t.format(s.format(object_word)) for s in states for t in TEMPLATES]
        with torch.no_grad():
            f = model.encode_text(clip.tokenize(sentences).to(model.positional_embedding.device)).float()
        f = F.normalize(f, dim=-1).mean(dim=0)
        sides.append(F.normalize(f, dim=-1))
    return torch.stack(sides)


# ---------------------------------------------------------------- vision


def head_weights(cfg: Config, params: Params, layer_index: int, h1: torch.Tensor, heads: int):
    """w_{l,h} for one DPAM block, per image. [B, H]"""
    b = h1.shape[0]
    if params.theta is None:
        return torch.ones(b, heads, device=h1.device)
    logits = params.theta[layer_index].expand(b, heads)
    if cfg.lhw_dynamic:
        c = F.normalize(h1[:, 0, :], dim=-1)  # [B, D]
        logits = logits + c @ params.u[layer_index].T
    if cfg.lhw_form == "softmax":
        return heads * torch.softmax(logits, dim=-1)
    if cfg.lhw_form == "sigmoid":
        return 2 * torch.sigmoid(logits)
    return logits


def resized_positional_embedding(pos: torch.Tensor, grid: int) -> torch.Tensor:
    pretrained = round(math.sqrt(pos.shape[0] - 1))
    if pretrained == grid:
        return pos
    d = pos.shape[1]
    patch = pos[1:].reshape(pretrained, pretrained, d).permute(2, 0, 1)[None]
    patch = F.interpolate(patch, size=(grid, grid), mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], patch[0].permute(1, 2, 0).reshape(grid * grid, d)])


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = t.shape
    return t.reshape(b, n, heads, d // heads).transpose(1, 2)  # [B, H, N, d]


def attend(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def image_trunk(model, images: torch.Tensor, cfg: Config, params: Params, keep_vv: bool = False):
    """The blocks: returns (o_L [B, N, D], {layer: raw read-out tokens [B, N, D]}, vv), where vv
    lists each two-path block's unweighted z' [B, H, N, d] when `keep_vv` (else empty)."""
    visual = model.visual
    b = images.shape[0]
    x = visual.conv1(images)  # [B, D, G, G]
    d_model, grid = x.shape[1], x.shape[-1]
    x = x.reshape(b, d_model, grid * grid).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(b, 1, d_model, device=images.device)
    x = torch.cat([cls, x], dim=1) + resized_positional_embedding(visual.positional_embedding, grid)
    o = visual.ln_pre(x)  # [B, N, D]
    s = None
    tokens, vv = {}, []
    for l, block in enumerate(visual.transformer.resblocks, start=1):
        if l < cfg.dpam_start:
            o = block(o.permute(1, 0, 2)).permute(1, 0, 2)
        else:
            attn = block.attn
            heads = attn.num_heads
            h1 = block.ln_1(o)
            q, k, v = F.linear(h1, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (split_heads(t, heads) for t in (q, k, v))
            w = head_weights(cfg, params, l - cfg.dpam_start, h1, heads)[:, :, None, None]
            z = attend(q, k, v)  # [B, H, N, d]
            z_vv = attend(v, v, v)
            if keep_vv:
                vv.append(z_vv)
            merge = lambda t: t.transpose(1, 2).reshape(b, -1, d_model)
            if s is None:
                s = o
            s = s + attn.out_proj(merge(w * z_vv))
            if cfg.lhw_paths == "both":
                z = w * z
            o = o + attn.out_proj(merge(z))
            o = o + block.mlp(block.ln_2(o))
        if l in cfg.readout:
            tokens[l] = s if l >= cfg.dpam_start else o
    return o, tokens, vv


def encode_image(model, images: torch.Tensor, cfg: Config, params: Params):
    """Returns (g [B, E], {layer: F_l [B, N, E]}), features L2-normalised."""
    visual = model.visual
    o, tokens, _ = image_trunk(model, images, cfg, params)
    g = o[:, 0, :]
    if cfg.global_ln_post:
        g = visual.ln_post(g)
    g = F.normalize(g @ visual.proj, dim=-1)
    feats = {l: F.normalize(visual.ln_post(t) @ visual.proj, dim=-1) for l, t in tokens.items()}
    return g, feats


# ---------------------------------------------------------------- scores


def gaussian_smooth(m: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([scipy.ndimage.gaussian_filter(x, sigma=sigma) for x in m])


def object_word(class_name: str | None) -> str:
    """The prompts' object word: the class name with underscores read as spaces, else "object"."""
    words = (class_name or "").replace("_", " ").split()
    return " ".join(words) if words else "object"


def memory_bank(model, references: torch.Tensor, cfg: Config, params: Params) -> dict:
    """Few-shot memory bank: per read-out layer, the references' patch features F_l (CLS
    dropped), computed as for the zero-shot map. {layer: [K·G², E]}"""
    _, feats = encode_image(model, references, cfg, params)
    return {l: f[:, 1:].reshape(-1, f.shape[-1]) for l, f in feats.items()}


def few_shot_map(feats: dict, bank: dict, side: int) -> torch.Tensor:
    """M_fs = mean_l V_l, V_l the upsampled (1 − max_b f·b)/2 of each test patch. [B, S, S]"""
    maps = []
    for l in sorted(feats):
        f = feats[l][:, 1:]  # [B, G², E]
        d = (1 - (f @ bank[l].T).max(dim=-1).values) / 2  # [B, G²]
        grid = round(math.sqrt(d.shape[1]))
        d = F.interpolate(d.reshape(-1, 1, grid, grid), size=(side, side), mode="bilinear",
                          align_corners=False)
        maps.append(d[:, 0])
    return torch.stack(maps, dim=1).mean(dim=1)


def score(model, images: torch.Tensor, text: torch.Tensor, cfg: Config, params: Params,
          bank: dict | None = None, beta: float = 0.5) -> dict:
    """Everything the engine reports for a batch, as numpy arrays. With a few-shot `bank`, the
    map is the fused (1 − β)·M + β·M_fs before smoothing (also reported: `few_shot_map`,
    `fused_map`)."""
    side = images.shape[-1]
    g, feats = encode_image(model, images, cfg, params)
    global_score = torch.softmax(g @ text.T / TAU, dim=-1)[:, 1]
    layer_maps = []
    for l in sorted(feats):
        p = torch.softmax(feats[l][:, 1:] @ text.T / TAU, dim=-1)  # [B, G², 2]
        grid = round(math.sqrt(p.shape[1]))
        p = p.permute(0, 2, 1).reshape(-1, 2, grid, grid)
        p = F.interpolate(p, size=(side, side), mode="bilinear", align_corners=False)
        layer_maps.append((p[:, 1] + 1 - p[:, 0]) / 2)
    layer_maps = torch.stack(layer_maps, dim=1)  # [B, R, S, S]
    extra = {}
    if bank is None:
        raw = layer_maps.mean(dim=1).detach().cpu().numpy()
    else:
        m_fs = few_shot_map(feats, bank, side)
        fused = (1 - beta) * layer_maps.mean(dim=1) + beta * m_fs
        raw = fused.detach().cpu().numpy()
        extra = {"few_shot_map": m_fs.detach().cpu().numpy(), "fused_map": raw}
    smoothed = gaussian_smooth(raw, cfg.sigma)
    k = max(1, math.ceil(cfg.jas_top_fraction * side * side))
    pixel_score = np.sort(smoothed.reshape(len(smoothed), -1), axis=1)[:, -k:].mean(axis=1)
    gs = global_score.detach().cpu().numpy()
    joint = (1 - cfg.jas_lambda) * gs + cfg.jas_lambda * pixel_score
    return {
        "global_feature": g.detach().cpu().numpy(),
        "global_score": gs,
        "layer_maps": layer_maps.detach().cpu().numpy(),
        "map": smoothed,
        "pixel_score": pixel_score,
        "score": joint,
        **extra,
    }


# ---------------------------------------------------------------- training


def focal_loss(p: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5):
    """AnomalyCLIP's focal loss on probabilities p [B, 2, S, S] against a 0/1 mask [B, S, S]."""
    one_hot = torch.stack([1 - mask, mask], dim=1).clamp(smooth, 1 - smooth)
    pt = (one_hot * p).sum(dim=1) + smooth
    return (-(1 - pt) ** gamma * pt.log()).mean()


def dice_loss(p: torch.Tensor, target: torch.Tensor):
    """1 − (2Σpy + 1)/(Σp + Σy + 1) per image, mean over the batch. p, target: [B, S, S]"""
    b = p.shape[0]
    p, target = p.reshape(b, -1), target.reshape(b, -1)
    return (1 - (2 * (p * target).sum(1) + 1) / (p.sum(1) + target.sum(1) + 1)).mean()


def smoothing_matrix(side: int, sigma: float) -> torch.Tensor:
    """A [S, S] with A[i, j] the weight of pixel j in scipy's 1-D Gaussian filter at pixel i, so
    that scipy.ndimage.gaussian_filter(m, sigma) = A m Aᵀ, differentiably."""
    eye = np.eye(side, dtype=np.float64)
    return torch.from_numpy(scipy.ndimage.gaussian_filter1d(eye, sigma, axis=0)).float()


def joint_score_loss(g, text, layer_probabilities, labels, cfg: Config):
    """Binary cross-entropy of the joint score (computed as `score` does) against the labels."""
    side = layer_probabilities[0].shape[-1]
    global_score = torch.softmax(g @ text.T / TAU, dim=-1)[:, 1]
    m = torch.stack([(p[:, 1] + 1 - p[:, 0]) / 2 for p in layer_probabilities], 1).mean(1)
    a = smoothing_matrix(side, cfg.sigma)
    smoothed = a @ m @ a.T
    k = max(1, math.ceil(cfg.jas_top_fraction * side * side))
    pixel_score = smoothed.reshape(len(m), -1).topk(k, dim=1).values.mean(1)
    joint = (1 - cfg.jas_lambda) * global_score + cfg.jas_lambda * pixel_score
    return F.binary_cross_entropy(joint, labels.float())


def training_loss(model, images, labels, masks, cfg: Config, params: Params,
                  joint_weight: float = 0.0, mask_known=None) -> dict:
    """The AnomalyCLIP-protocol loss, straightforwardly with autograd through everything, plus
    `joint_weight` × the joint-score loss. `mask_known` [B] bool (default: all) marks the images
    whose masks are ground truth: the spec's mixed-data rule computes the focal and Dice terms
    over those images only."""
    rows = torch.ones(len(images), dtype=torch.bool) if mask_known is None else mask_known
    side = images.shape[-1]
    text = encode_prompted_text(model, params)
    g, feats = encode_image(model, images, cfg, params)
    ce = F.cross_entropy(g @ text.T / TAU, labels)
    focal = torch.zeros(())
    dice = torch.zeros(())
    layer_probabilities = []
    for l in sorted(feats):
        p = torch.softmax(feats[l][:, 1:] @ text.T / TAU, dim=-1)
        grid = round(math.sqrt(p.shape[1]))
        p = p.permute(0, 2, 1).reshape(-1, 2, grid, grid)
        p = F.interpolate(p, size=(side, side), mode="bilinear", align_corners=False)
        layer_probabilities.append(p)
        if rows.any():
            p, m = p[rows], masks[rows]
            focal = focal + focal_loss(p, m)
            dice = dice + dice_loss(p[:, 1], m) + dice_loss(p[:, 0], 1 - m)
    total = ce + focal + dice
    out = {"ce": ce, "focal": focal, "dice": dice}
    if joint_weight > 0:
        joint = joint_score_loss(g, text, layer_probabilities, labels, cfg)
        total = total + joint_weight * joint
        out["joint"] = joint
    out["total"] = total
    return out


def trainable(params: Params) -> dict:
    named = {"prompt.ctx_pos": params.ctx_pos, "prompt.ctx_neg": params.ctx_neg,
             "lhw.theta": params.theta}
    for i, d in enumerate(params.deep):
        named[f"prompt.deep.{i}"] = d
    if params.u is not None:
        named["lhw.u"] = params.u
    return named
