#!/usr/bin/env python3
"""A toy decode loop on mixpa: a paged KV-cache manager plus continuous batching.

Each step every running request appends one token's K/V to its pages (a page comes from the free
list when the last one is full), then one mixpa.paged_attention call computes attention for the
whole batch straight from the paged cache (no copy, no gather). Requests finish and release their
pages, which new requests reuse. Every step is checked against
torch.nn.functional.scaled_dot_product_attention on the densely gathered KV (NumPy float64
attention when torch is not installed).

    python3 examples/decode_loop.py [--steps 24] [--executor auto]
"""
from __future__ import annotations

import argparse
import collections
import math
import sys

import ml_dtypes
import numpy as np

import mixpa

BF16 = ml_dtypes.bfloat16


class PagedKVCache:
    """Fixed pool of pages [num_blocks, block_size, kv_heads, head_dim] for K and for V, a free
    list, and each request's page list and length (what a serving engine's block manager keeps)."""

    def __init__(self, num_blocks, block_size, kv_heads, head_dim, max_pages_per_request):
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.key_cache = mixpa.zeros_kv_cache(shape)  # on huge pages: pages are read at random
        self.value_cache = mixpa.zeros_kv_cache(shape)
        self.block_size = block_size
        self.max_pages = max_pages_per_request
        self.free_pages = collections.deque(range(num_blocks))
        self.pages: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self.released: set[int] = set()  # pages freed at least once (to count reuse)
        self.reused = 0

    def add_request(self, rid):
        self.pages[rid], self.lengths[rid] = [], 0

    def append(self, rid, k, v):
        """Appends one token's K and V ([kv_heads, head_dim]) to request `rid`."""
        n = self.lengths[rid]
        if n % self.block_size == 0:  # last page full (or none yet): take a page from the free list
            if not self.free_pages:
                raise MemoryError("KV cache out of pages")
            if len(self.pages[rid]) == self.max_pages:
                raise ValueError(f"request {rid} exceeds {self.max_pages} pages")
            page = self.free_pages.popleft()
            self.reused += page in self.released
            self.pages[rid].append(page)
        page, row = self.pages[rid][n // self.block_size], n % self.block_size
        self.key_cache[page, row] = k
        self.value_cache[page, row] = v
        self.lengths[rid] = n + 1

    def release(self, rid):
        """A finished request gives its pages back; their stale contents are never read again."""
        pages = self.pages.pop(rid)
        del self.lengths[rid]
        self.free_pages.extend(pages)
        self.released.update(pages)

    def batch(self, rids):
        """block_table int32 [batch, max_pages] (unused entries -1: never read) and context_lens."""
        table = np.full((len(rids), self.max_pages), -1, dtype=np.int32)
        for i, rid in enumerate(rids):
            table[i, :len(self.pages[rid])] = self.pages[rid]
        lens = np.array([self.lengths[r] for r in rids], dtype=np.int32)
        return table, lens

    def gather(self, rid):
        """Dense K, V [length, kv_heads, head_dim] of one request (for the check only)."""
        pages, n = self.pages[rid], self.lengths[rid]
        return (self.key_cache[pages].reshape(-1, *self.key_cache.shape[2:])[:n],
                self.value_cache[pages].reshape(-1, *self.value_cache.shape[2:])[:n])


def reference(cache, rids, query, scale, torch):
    """Per request: SDPA over the gathered dense KV (kv heads repeated for GQA)."""
    heads, head_dim = query.shape[1:]
    out = np.zeros((len(rids), heads, head_dim), dtype=np.float64)
    for i, rid in enumerate(rids):
        k, v = (x.astype(np.float32) for x in cache.gather(rid))
        group = heads // k.shape[1]
        q = query[i].astype(np.float32)
        if torch is not None:
            tq = torch.from_numpy(q)[None, :, None, :]                                  # [1, H, 1, D]
            tk = torch.from_numpy(k).permute(1, 0, 2).repeat_interleave(group, 0)[None]  # [1, H, n, D]
            tv = torch.from_numpy(v).permute(1, 0, 2).repeat_interleave(group, 0)[None]
            out[i] = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=scale)[0, :, 0].numpy()
        else:
            kk = np.repeat(k.astype(np.float64), group, axis=1)
            vv = np.repeat(v.astype(np.float64), group, axis=1)
            s = scale * np.einsum("hd,nhd->hn", q.astype(np.float64), kk)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[i] = np.einsum("hn,nhd->hd", p / p.sum(axis=1, keepdims=True), vv)
    return out


def admit(cache, arrivals, running, next_id, token_kv, max_batch=4):
    """Admits waiting requests while the free list covers a newcomer's whole length plus what the
    running requests still need (so no request runs out of pages mid-decode), and prefills each
    newcomer's prompt into the cache. Returns the next request id."""
    def pages_for(tokens):
        return -(-tokens // cache.block_size)

    committed = sum(pages_for(cache.lengths[r] + left) - len(cache.pages[r]) for r, left in running.items())
    while arrivals and len(running) < max_batch and len(cache.free_pages) - committed >= pages_for(sum(arrivals[0])):
        prompt, gen = arrivals.popleft()
        committed += pages_for(prompt + gen)
        cache.add_request(next_id)
        for _ in range(prompt):
            cache.append(next_id, *token_kv())
        running[next_id] = gen
        next_id += 1
    return next_id


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--executor", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import torch
        checker = "torch SDPA"
    except ImportError:
        torch = None
        checker = "NumPy float64 attention"
        print("torch is not installed: checking against NumPy float64 attention instead of torch SDPA")

    heads, kv_heads, head_dim, block_size = 8, 2, 64, 16
    scale = 1.0 / math.sqrt(head_dim)
    rng = np.random.default_rng(args.seed)
    cache = PagedKVCache(num_blocks=12, block_size=block_size, kv_heads=kv_heads, head_dim=head_dim,
                         max_pages_per_request=8)
    # (prompt length, tokens to generate) of each request, in arrival order; two start at once.
    arrivals = collections.deque([(5, 4), (40, 9), (17, 3), (0, 6), (33, 5), (1, 7), (60, 4), (15, 8)])
    running: dict[int, int] = {}  # request id -> tokens still to generate
    out_buf = np.empty((8, heads, head_dim), dtype=np.float32)  # reused each step via out=
    next_id, worst, served, steps = 0, 0.0, 0, 0

    def token_kv():
        return (rng.uniform(-0.5, 0.5, (kv_heads, head_dim)).astype(BF16),
                rng.uniform(-1, 1, (kv_heads, head_dim)).astype(BF16))

    for step in range(args.steps):
        next_id = admit(cache, arrivals, running, next_id, token_kv)
        if not running:
            break
        steps += 1
        rids = sorted(running)
        for rid in rids:                                   # decode: this step's token K/V
            cache.append(rid, *token_kv())
        query = rng.uniform(-0.5, 0.5, (len(rids), heads, head_dim)).astype(BF16)
        block_table, context_lens = cache.batch(rids)
        out = mixpa.paged_attention(query, cache.key_cache, cache.value_cache, block_table, context_lens,
                                    scale=scale, executor=args.executor, out=out_buf[:len(rids)])
        ref = reference(cache, rids, query, scale, torch)
        err = np.abs(out - ref)
        worst = max(worst, float(err.max()))
        if not np.all(err <= 2e-3 + 2e-3 * np.abs(ref)):
            print(f"step {step}: mismatch vs {checker}: max |err| {err.max():.3g}")
            return 1
        print(f"step {step:2d}: batch {len(rids)} lens {list(map(int, context_lens))} "
              f"free pages {len(cache.free_pages):2d}  max |err| {err.max():.2e} vs {checker}")
        for rid in rids:                                   # finished requests release their pages
            running[rid] -= 1
            if running[rid] == 0:
                del running[rid]
                cache.release(rid)
                served += 1
    print(f"decode_loop: OK: {steps} steps, {served} requests finished, {next_id} admitted, "
          f"{cache.reused} page allocations reused freed pages, max |err| {worst:.2e} vs {checker} "
          f"(executor {args.executor}: {mixpa.executors()[0] if args.executor == 'auto' else args.executor})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
