"""Kernel rates behind the floor analysis in BENCHMARKS.md, with torch on the engine's threads.

The ViT-B/16 at S = 512 shapes (N = 1025 tokens, width 768, 12 heads): the block's linear layers
as PyTorch runs them (x·Wᵀ), with the weights stored transposed (an NN product) and through MKL's
pre-packed linear; the fused attention; and one block's MLP with QuickGELU written out
(`h·σ(1.702h)`), with it fused the way the engine runs fp32 (`silu` in place, the scales as the
products' α), and the two products alone (interleaved). Medians of timed repetitions.

    .venv-reference/bin/python benches/kernels.py [--threads 2] [--rounds 2]
"""
import argparse
import time

import torch
import torch.nn.functional as F

N, D, H = 1025, 768, 12


def median_s(fn, reps=15):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def matrix_rate():
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median_s(lambda: a @ b, reps=5) / 1e9


def linears():
    out = {}
    for inp, outp in [(768, 2304), (768, 3072), (3072, 768)]:
        w, b, x = torch.randn(outp, inp) * 0.02, torch.randn(outp), torch.randn(N, inp)
        wt = w.t().contiguous()
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, N)
        flops = 2 * N * inp * outp
        out[f"linear {inp}->{outp} x.Wt"] = flops / median_s(lambda: F.linear(x, w, b)) / 1e9
        out[f"linear {inp}->{outp} NN"] = flops / median_s(lambda: torch.addmm(b, x, wt)) / 1e9
        out[f"linear {inp}->{outp} mkl packed"] = (
            flops / median_s(lambda: torch.ops.mkl._mkl_linear(x, packed, w, b, N)) / 1e9)
    return out


def attention():
    qkv = torch.randn(1, N, 3 * D)
    q, k, v = [t.view(1, N, H, D // H).transpose(1, 2) for t in qkv.chunk(3, -1)]
    flops = 4 * N * N * D
    return {"sdpa q,k,v": flops / median_s(lambda: F.scaled_dot_product_attention(q, k, v)) / 1e9,
            "sdpa v,v,v": flops / median_s(lambda: F.scaled_dot_product_attention(v, v, v)) / 1e9}


def mlp():
    w1, b1 = torch.randn(4 * D, D) * 0.02, torch.randn(4 * D)
    w2, b2 = torch.randn(D, 4 * D) * 0.02, torch.randn(D)
    x = torch.randn(1, N, D)
    b1s, w1t, w2t = (b1 * 1.702).view(1, 1, -1), w1.t().unsqueeze(0), w2.t().unsqueeze(0)

    def written_out():
        h = F.linear(x, w1, b1)
        return F.linear(h * (h * 1.702).sigmoid(), w2, b2)

    def fused():
        h = F.silu(torch.baddbmm(b1s, x, w1t, alpha=1.702), inplace=True)
        return torch.baddbmm(b2.view(1, 1, -1), h, w2t, alpha=1 / 1.702)

    def products():
        return F.linear(F.linear(x, w1, b1), w2, b2)

    # The three interleaved, repetition by repetition, so that a noisy neighbour hits all three.
    variants = {"written out": written_out, "fused": fused, "products alone": products}
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(15):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    out = {f"mlp {name} (ms)": sorted(ts)[len(ts) // 2] * 1e3 for name, ts in times.items()}
    out["mlp fused max |diff|"] = (written_out() - fused()).abs().max().item()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rates in GFLOP/s")
    for r in range(1, args.rounds + 1):
        results = {"2048^3 matrix product": matrix_rate(), **linears(), **attention(), **mlp()}
        for name, value in results.items():
            print(f"round {r}  {name:32s} {value:10.4g}", flush=True)


if __name__ == "__main__":
    main()
