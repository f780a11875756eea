#!/usr/bin/env python3
"""What calling mixpa from Python costs: per-call overhead and memory (no copy of the KV cache).

  overhead: median time of mixpa.paged_attention on a case vs the same call with every context
            length 0 (argument import + validation + dispatch), the same two through a
            mixpa.DecodePlan (made once, run per layer: argument import + shape checks + run), and
            (--cli) vs the C++ CLI's own median for the same case and executor, all from the same run.
  rss:      peak RSS (ru_maxrss) after import, after make_case (the KV cache), and after
            paged_attention on it, against the KV cache's size.

    python3 bench/python/python_overhead.py overhead --case SmallCase1 --executor cpu --cli build/mixpa
    python3 bench/python/python_overhead.py rss --case Case1 --executor reference [--torch]
"""
import argparse
import re
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

import mixpa

MiB = 1 << 20


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def overhead(args):
    c = mixpa.make_case(args.case, args.seed)
    out = np.empty(c.query.shape, dtype=np.float32)
    empty_lens = np.zeros_like(c.context_lens)
    call = lambda: c.run(executor=args.executor, out=out)  # noqa: E731
    call_empty = lambda: mixpa.paged_attention(c.query, c.key_cache, c.value_cache, c.block_table,  # noqa: E731
                                               empty_lens, scale=c.scale, executor=args.executor, out=out)
    call()  # warm-up
    full = median_seconds(call, args.repeats)
    empty = median_seconds(call_empty, max(args.repeats, 200))
    print(f"{args.case} executor={args.executor}: paged_attention median {full * 1e3:.3f} ms over {args.repeats} calls")
    print(f"  same call with every context length 0 (binding + validation + dispatch): median {empty * 1e6:.1f} us")
    print(f"  overhead share of the full call: {empty / full:.2e}")
    plan = mixpa.DecodePlan(*c.inputs(), scale=c.scale, executor=args.executor)
    plan_empty = mixpa.DecodePlan(c.query, c.key_cache, c.value_cache, c.block_table, empty_lens, scale=c.scale,
                                  executor=args.executor)
    q, k, v = c.query, c.key_cache, c.value_cache
    plan.run(q, k, v, out=out)
    plan_full = median_seconds(lambda: plan.run(q, k, v, out=out), args.repeats)
    plan_zero = median_seconds(lambda: plan_empty.run(q, k, v, out=out), max(args.repeats, 2000))
    print(f"  DecodePlan.run ({plan.executor}{', ' + plan.kernels + ' kernels' if plan.kernels else ''}): "
          f"median {plan_full * 1e3:.3f} ms; with every context length 0: median {plan_zero * 1e6:.1f} us "
          f"(the fixed cost of a layer's call from Python)")
    if args.cli:
        cli = cli_median_seconds(args)
        print(f"  C++ CLI `mixpa run --case {args.case} --no-verify --executor {args.executor} --repeat {args.repeats}`: "
              f"median {cli * 1e3:.3f} ms; Python / CLI = {full / cli:.3f}")


def cli_median_seconds(args):
    """The CLI's own median (it times run() alone), from a run of it interleaved with ours."""
    cmd = [args.cli, "run", "--case", args.case, "--seed", str(args.seed), "--no-verify", "--executor", args.executor,
           "--repeat", str(args.repeats)]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"executor \S+: ([0-9.]+) ms \(median", text)
    if not match:
        raise SystemExit(f"cannot find the median in the CLI's output:\n{text}")
    return float(match.group(1)) / 1e3


def rss(args):
    if args.torch:
        import torch  # noqa: F401 (imported before the baseline: torch itself takes memory)
    base = peak_rss_bytes()
    c = mixpa.make_case(args.case, args.seed)
    after_case = peak_rss_bytes()
    inputs = c.inputs()
    if args.torch:  # the same memory as torch tensors (torch.from_numpy shares it)
        import torch
        inputs = [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype.itemsize == 2
                  else torch.from_numpy(a) for a in inputs]
    t = time.perf_counter()
    out = mixpa.paged_attention(*inputs, scale=c.scale, executor=args.executor)
    seconds = time.perf_counter() - t
    after_call = peak_rss_bytes()
    kv = c.kv_bytes
    print(f"{args.case} ({'torch' if args.torch else 'numpy'} inputs): KV cache {kv / MiB:.0f} MiB (key + value), out {out.numel() * 4 / MiB if args.torch else out.nbytes / MiB:.1f} MiB, "
          f"executor={args.executor} call {seconds:.2f} s")
    print(f"  peak RSS: after import {base / MiB:.0f} MiB, after make_case {after_case / MiB:.0f} MiB, "
          f"after paged_attention {after_call / MiB:.0f} MiB")
    print(f"  growth during the call: {(after_call - after_case) / MiB:.1f} MiB "
          f"= {(after_call - after_case) / kv:.4f} x KV size (a copy of the KV cache would be >= 1.0)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["overhead", "rss"])
    ap.add_argument("--case", default=None)
    ap.add_argument("--executor", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cli", help="overhead: also time the C++ CLI at this path (e.g. build/mixpa) in the same run")
    ap.add_argument("--torch", action="store_true", help="rss: pass torch tensors (sharing the NumPy memory)")
    args = ap.parse_args()
    args.case = args.case or ("SmallCase1" if args.mode == "overhead" else "Case1")
    (overhead if args.mode == "overhead" else rss)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
