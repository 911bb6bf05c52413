#!/usr/bin/env python3
"""PyTorch SDPA baselines for bench/gpu_attention.c: cuDNN and flash backends.

Prints one line per (backend, N): "sdpa <backend> <N> <median ms>", B=1, H=24,
D=128, bf16, fresh random inputs before each timed run, CUDA events.
Usage: gpu_sdpa.py N [N ...]
"""
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F


def median_ms(backend, n, reps):
    times = []
    for i in range(reps + 2):
        q, k, v = (torch.randn(1, 24, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with sdpa_kernel(backend):
            a.record()
            F.scaled_dot_product_attention(q, k, v)
            b.record()
        b.synchronize()
        if i >= 2:
            times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    for n in [int(x) for x in sys.argv[1:]]:
        reps = 20 if n < 30000 else 7
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                print(f"sdpa {name} {n} {median_ms(be, n, reps):.4f}", flush=True)
            except Exception as e:  # a backend missing on this build: reported, not fatal
                print(f"sdpa {name} {n} nan  # {type(e).__name__}: {str(e)[:80]}", flush=True)


if __name__ == "__main__":
    main()
