#!/usr/bin/env python3
"""GPU peers for mixpa_cuda_bench, on a case the bench dumped (bench/peer_dump.cpp: the query
and the KV pages gathered densely per request, heads of one KV head packed as query rows).

Times, with CUDA events (median of --reps after warm-up):
  - torch scaled_dot_product_attention, cuDNN backend and flash backend
    (q [batch, kv_heads, group, head_dim], k/v [batch, kv_heads, ctx, head_dim]);
  - FlashInfer BatchDecodeWithPagedKVCacheWrapper, if flashinfer imports, on the same dense
    KV viewed as pages of the case's block size (identity page table).
Prints one line per peer: its time, its effective KV TB/s, mixpa's speed-up over it, and the
max |peer - mixpa| (peers output bf16). Exits 0 with a message for every peer it cannot run."""
import argparse
import json
import os
import statistics
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--name", default="case")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--mixpa-ms", type=float, required=True)
    ap.add_argument("--stream-tbs", type=float, default=0.0)
    ap.add_argument("--block-size", type=int, default=16, help="page size for the FlashInfer peer")
    args = ap.parse_args()
    try:
        import numpy as np
        import torch
    except ImportError as e:
        print(f"{args.name:<11} peers skipped: {e}")
        return 0
    if not torch.cuda.is_available():
        print(f"{args.name:<11} peers skipped: torch sees no CUDA device")
        return 0
    h = json.load(open(os.path.join(args.dir, "header.json")))
    b, hq, kvh, d, ctx = h["batch"], h["num_heads"], h["num_kv_heads"], h["head_dim"], h["ctx"]
    group = hq // kvh
    dev = torch.device("cuda")

    def load_bf16(name, shape):
        raw = np.fromfile(os.path.join(args.dir, name), dtype=np.int16)
        return torch.from_numpy(raw).view(torch.bfloat16).reshape(shape).to(dev)

    q = load_bf16("q.bin", (b, kvh, group, d))
    k = load_bf16("k.bin", (b, kvh, ctx, d))
    v = load_bf16("v.bin", (b, kvh, ctx, d))
    ref = torch.from_numpy(np.fromfile(os.path.join(args.dir, "mixpa_out.bin"), dtype=np.float32)).reshape(b, hq, d).to(dev)
    kv_bytes = 2 * k.numel() * k.element_size()

    def time_ms(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.reps):
            a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            z.record()
            z.synchronize()
            times.append(a.elapsed_time(z))
        return statistics.median(times)

    def report(peer, ms, out):
        diff = (out.float().reshape(b, hq, d) - ref).abs().max().item()
        tbs = kv_bytes / (ms * 1e-3) / 1e12
        share = f", {100 * tbs / args.stream_tbs:5.1f}% of stream read" if args.stream_tbs > 0 else ""
        print(f"{args.name:<11} peer {peer:<22} {ms:8.4f} ms  {tbs:5.2f} TB/s{share} | mixpa {ms / args.mixpa_ms:5.2f}x faster"
              f" | max |peer - mixpa| {diff:.1e}")

    from torch.nn.attention import SDPBackend, sdpa_kernel
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for label, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with torch.inference_mode(), sdpa_kernel([backend]):
                out = sdpa(q, k, v, scale=h["scale"])
                ms = time_ms(lambda: sdpa(q, k, v, scale=h["scale"]))
            report(label, ms, out)
        except Exception as e:  # backend unavailable for this shape / build
            print(f"{args.name:<11} peer {label:<22} skipped: {str(e).splitlines()[0][:120]}")

    try:
        import flashinfer
    except Exception as e:
        print(f"{args.name:<11} peer {'flashinfer paged':<22} skipped: {e}")
        return 0
    try:
        bs = args.block_size
        pages_per_req = (ctx + bs - 1) // bs
        pad = pages_per_req * bs - ctx
        # [batch, kvh, ctx, d] -> pages [batch * pages_per_req, bs, kvh, d] (NHD)
        def paged(x):
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
            return x.permute(0, 2, 1, 3).reshape(b * pages_per_req, bs, kvh, d).contiguous()
        kc, vc = paged(k), paged(v)
        indptr = torch.arange(0, b + 1, dtype=torch.int32, device=dev) * pages_per_req
        indices = torch.arange(0, b * pages_per_req, dtype=torch.int32, device=dev)
        last = torch.full((b,), ctx - (pages_per_req - 1) * bs, dtype=torch.int32, device=dev)
        ws = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
        wrapper.plan(indptr, indices, last, hq, kvh, d, bs, q_data_type=torch.bfloat16, sm_scale=h["scale"])
        qf = q.reshape(b, hq, d)
        out = wrapper.run(qf, (kc, vc))
        ms = time_ms(lambda: wrapper.run(qf, (kc, vc)))
        report("flashinfer paged", ms, out)
    except Exception as e:
        print(f"{args.name:<11} peer {'flashinfer paged':<22} skipped: {str(e).splitlines()[0][:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
