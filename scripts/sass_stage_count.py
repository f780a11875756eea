#!/usr/bin/env python3
"""Instructions the producer warp issues per ring stage, read from the kernel's SASS.

Two counts per kernel instantiation:
  hot path   a trace of the tile loop's SASS from its head to its back edge along the path a
             full stage takes when no page boundary is crossed: forward branches around code
             that reads the block table (LDG), raises the error flag (ATOM/RED), spins on an
             mbarrier (TRYWAIT) or calls the watchdog (CALL) are taken, BRA.DIV (divergent
             warp) is not, inner backward branches fall through (copy loops are multiplied
             by their trip count, see below). The page-crossing path (skipped) is reported
             separately with its length: it runs once per lane per page entered. Where the
             producer chooses (warp-uniformly, VOTE.ALL) between a per-pass checked copy path
             and the in-page fast path, the fast path is traced.
  static     every instruction of the tile loop (outside the spin loops), copy loops times
             their trip count: an upper bound that counts rarely taken paths once per stage.
For the pre-stream producer (per-row page lookups each tile) use the static count: its table
reads run every tile, they are not a rare path.

    cuobjdump -sass libmixpa_cuda_kernels.a | python3 scripts/sass_stage_count.py
    (cuobjdump: CUDA toolkit, or `pip install nvidia-cuda-cuobjdump`)

Method (static, per kernel instantiation): the producer's copy loop is the innermost loop
(backward BRA) that holds LDGSTS (cp.async); the tile loop is the innermost loop that
encloses it and also holds the full-barrier arrive (cp.async.mbarrier.arrive: ARRIVES).
Per stage = (tile-loop instructions outside the copy loop and outside the mbarrier spin
loops) + (copy-loop body x its trip count), trip count = LDGSTS per stage / LDGSTS per
copy-loop iteration (2 per 16-byte piece row: K and V; a stage = 64 rows x head_dim x 2 B,
x 2 tensors). Code on rarely taken paths (bad page id, page crossing) is counted as if
taken once per stage: an upper bound for those, exact for the straight-line path.
"""
import re
import sys
from collections import defaultdict

INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
FUNC = re.compile(r"Function : (\S+)")


def parse(text):
    funcs, cur, arch = {}, None, "?"
    for line in text.splitlines():
        a = re.match(r"\s*arch = (\S+)", line)
        if a:
            arch = a.group(1)
            continue
        m = FUNC.search(line)
        if m:
            cur = arch + " " + m.group(1)
            funcs[cur] = []
            continue
        m = INS.search(line)
        if m and cur:
            funcs[cur].append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


def loops(ins):
    out = []
    for addr, text in ins:
        m = re.search(r"\bBRA\s+(?:`\()?.*?0x([0-9a-f]+)", text)
        if m and "BRA.DIV" not in text:
            target = int(m.group(1), 16)
            if target <= addr:
                out.append((target, addr))
    return out


def count(ins, lo, hi, pred=lambda t: True):
    return sum(1 for a, t in ins if lo <= a <= hi and pred(t))


def analyse(name, ins, head_dim, elem_bytes=2):
    ls = loops(ins)
    ldg = [a for a, t in ins if "LDGSTS" in t]
    if not ldg:
        return None
    arrive = [a for a, t in ins if "ARRIVES" in t]
    per_stage_ldgsts = 2 * 64 * head_dim * elem_bytes // 16 // 32  # per lane: K and V pieces of 64 rows

    def copy_loop(l):  # a loop of copies inside one stage: holds LDGSTS, not the arrive
        k = count(ins, l[0], l[1], lambda t: "LDGSTS" in t)
        return k > 0 and k < per_stage_ldgsts and per_stage_ldgsts % k == 0 and not any(l[0] <= a <= l[1] for a in arrive)

    inner = min((l for l in ls if copy_loop(l)), key=lambda l: l[1] - l[0], default=None)
    if inner is None:  # fully unrolled copy
        inner_body, inner_ldg, trips = 0, 0, 0
        lo_in, hi_in = 0, -1
    else:
        lo_in, hi_in = inner
        inner_body = count(ins, lo_in, hi_in)
        inner_ldg = count(ins, lo_in, hi_in, lambda t: "LDGSTS" in t)
        trips = per_stage_ldgsts / inner_ldg
    # The tile loop: the innermost loop around the copy loop (or the copies) with the arrive.
    # LDGSTS outside it are out-of-line paths (BRA.DIV fallbacks of a divergent warp).
    span = (lo_in, hi_in) if inner else (min(ldg), max(ldg))
    tile = min((l for l in ls if l[0] <= span[0] and l[1] >= span[1] and l != inner
                and any(l[0] <= a <= l[1] for a in arrive)), key=lambda l: l[1] - l[0], default=None)
    if tile is None:
        return None
    spins = [l for l in ls if tile[0] <= l[0] and l[1] <= tile[1] and l not in (inner, tile) and
             any("TRYWAIT" in t for a, t in ins if l[0] <= a <= l[1])]
    spin_ins = sum(count(ins, a, b) for a, b in spins)
    straight = count(ins, tile[0], tile[1]) - inner_body - spin_ins
    total = straight + inner_body * trips
    hot, crossing = hot_path(ins, tile[0], tile[1], inner, trips)
    return dict(name=name, straight=straight, inner_body=inner_body, inner_ldgsts=inner_ldg, trips=trips,
                per_stage=total, ldgsts=per_stage_ldgsts, hot=hot, crossing=crossing)


SKIP = ("LDG.", "ATOM", "RED.", "TRYWAIT", "CALL")


def hot_path(ins, head, back, inner=None, trips=1):
    """Instructions along the no-crossing path of one tile-loop iteration, and the longest
    skipped (page-crossing) region."""
    index = {a: i for i, (a, _) in enumerate(ins)}
    i, n, longest, guard = index[head], 0, 0, 0
    while guard < 100000:
        guard += 1
        addr, text = ins[i]
        if addr > back:
            break
        weight = trips if inner and inner[0] <= addr <= inner[1] else 1
        n += weight
        if addr == back:
            break
        m = re.search(r"\bBRA(\.U\.ANY|\.U)?\s+(?:`\()?.*?0x([0-9a-f]+)", text)
        if m and "BRA.DIV" not in text:
            target = int(m.group(2), 16)
            conditional = text.startswith("@")
            if not conditional:
                if target < head or target > back:
                    break
                i = index[target]
                continue
            if target > addr:
                region = [t for a, t in ins if addr < a < target]
                if any(k in t for t in region for k in SKIP) and not any("LDGSTS" in t for t in region):
                    longest = max(longest, len(region))
                    i = index[target]
                    continue
                # A warp-uniform choice (VOTE.ALL just before) between the per-pass checked copy
                # path (copies and table reads) and the in-page fast path: take the fast one.
                recent = [t for _, t in ins[max(0, i - 6):i]]
                if any("VOTE.ALL" in t for t in recent) and any("LDGSTS" in t for t in region) and \
                        any("LDG." in t for t in region):
                    i = index[target]
                    continue
        i += 1
    return n, longest


def main():
    funcs = parse(sys.stdin.read())
    print(f"{'arch  kernel (head_dim, row_frags, dtype)':46s} {'hot path':>8s} {'crossing':>8s} {'static':>8s} "
          f"{'(outside copy loop':>19s} {'+ body x trips)':>16s}  LDGSTS/stage/lane")
    # The kernel's third template argument is its KernelDtype (src/cuda/kernel_params.h); fp8
    # stages hold 1-byte elements (half the copies of a 16-bit stage).
    dtypes = {0: ("bf16", 2), 1: ("f16", 2), 2: ("fp8/bf16q", 1), 3: ("fp8/f16q", 1)}
    for name, ins in funcs.items():
        m = re.search(r"paged_attention_kernelILi(\d+)ELi(\d+)E(?:Li(\d+)E)?", name)
        if not m:
            continue
        hd, rf = int(m.group(1)), int(m.group(2))
        dt, eb = dtypes.get(int(m.group(3) or 0), ("?", 2))
        r = analyse(name, ins, hd, eb)
        label = name.split()[0] + " paged_attention_kernel<%d,%d,%s>" % (hd, rf, dt)
        if r is None:
            print(f"{label}: producer loop not found")
            continue
        print(f"{label:46s} {r['hot']:8.0f} {r['crossing']:8d} {r['per_stage']:8.0f} {r['straight']:19d} "
              f"{r['inner_body']:7d} x {r['trips']:5.1f}  {r['ldgsts']}")


if __name__ == "__main__":
    main()
