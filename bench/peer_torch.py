#!/usr/bin/env python3
"""Peer for mixpa_bench: PyTorch CPU scaled_dot_product_attention on a case dumped by the
bench (dense KV per request; the heads of one KV head are packed as query rows).

Prints `peer_seconds <median>` and a line comparing the peer's output with mixpa's.
Exits 0 with a message (and no peer_seconds) when torch is not installed."""
import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    try:
        import numpy as np
        import torch
    except ImportError as e:
        print(f"torch peer skipped: {e}")
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    h = json.load(open(os.path.join(args.dir, "header.json")))
    b, hq, kvh, d, ctx = h["batch"], h["num_heads"], h["num_kv_heads"], h["head_dim"], h["ctx"]
    group = hq // kvh

    def load_bf16(name, shape):
        raw = np.fromfile(os.path.join(args.dir, name), dtype=np.int16)
        return torch.from_numpy(raw).view(torch.bfloat16).reshape(shape)

    q = load_bf16("q.bin", (b, kvh, group, d))
    k = load_bf16("k.bin", (b, kvh, ctx, d))
    v = load_bf16("v.bin", (b, kvh, ctx, d))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.inference_mode():
        out = sdpa(q, k, v, scale=h["scale"])  # warm-up
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            out = sdpa(q, k, v, scale=h["scale"])
            times.append(time.perf_counter() - t0)
    ref = np.fromfile(os.path.join(args.dir, "mixpa_out.bin"), dtype=np.float32).reshape(b, hq, d)
    diff = np.abs(out.float().reshape(b, hq, d).numpy() - ref).max()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 SDPA; "
          f"max |torch - mixpa| = {diff:.2e} (torch's output is bf16)")
    print(f"peer_seconds {statistics.median(times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
