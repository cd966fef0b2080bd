"""Throughput of `parity diff` against merely reading both stores.

Builds two synthetic full-vocabulary stores (reference and a perturbed
candidate on the same forced trajectory), then, each in a fresh process and
interleaved: reads and decodes both stores block by block, runs
``differ.diff`` with the C kernel, and with the numpy kernel. Prints MB/s, the
ratio diff_time / read_time (target <= 1.5), the diff's peak RSS (target
< 512 MiB), and whether ``import differ`` pulls torch or vllm.

    .venv/bin/python bench/diff_throughput.py [--gib 0.5] [--vocab 32000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def build(out: Path, gib: float, vocab: int, seqs: int) -> tuple[Path, Path]:
    from differ.testing import StoreSpec, build_manifest, log_softmax, SeqData
    from schemas.store import GENERATED, StoreWriter

    rows = max(int(gib * (1 << 30) / (4 * vocab)), seqs)
    per_seq = rows // seqs
    rng = np.random.default_rng(0)
    prompt = [1, 2, 3]
    block = 128
    tokens = []
    ref_w = StoreWriter(out, vocab_size=vocab)
    cand_w = StoreWriter(out, vocab_size=vocab)
    for s in range(seqs):
        toks = []
        for a in range(0, per_seq, block):
            n = min(block, per_seq - a)
            logits = (rng.standard_normal((n, vocab)) * 3).astype(np.float32)
            ref = log_softmax(logits).astype(np.float32)
            cand = log_softmax(logits + rng.standard_normal((n, vocab)).astype(np.float32) * 0.02).astype(np.float32)
            ref_w.append_rows(GENERATED, s, ref)
            cand_w.append_rows(GENERATED, s, cand)
            toks += [int(t) for t in np.argmax(ref, axis=1)]
        tokens.append(toks)
    empty = np.zeros((0, vocab), np.float32)
    spec = StoreSpec(vocab_size=vocab, sequences=[SeqData(prompt, t, empty) for t in tokens])
    ref_path, ref_m = ref_w.commit(build_manifest(spec), [prompt + t for t in tokens])
    spec.device, spec.run = "rbln", {"golden": ref_m.digest}
    cand_path, _ = cand_w.commit(build_manifest(spec), [prompt + t for t in tokens])
    return ref_path, cand_path


def child(mode: str, ref: str, cand: str) -> None:
    from schemas.store import GENERATED, Store
    import differ
    from differ.core import block_rows_for

    t = time.perf_counter()
    nbytes = 0
    if mode == "read":
        stores = [Store.open(ref), Store.open(cand)]
        step = block_rows_for(stores[0].vocab_size, True)
        total = int(stores[0].row_offsets(GENERATED)[-1])
        for a in range(0, total, step):
            for st in stores:
                nbytes += st.rows(GENERATED, a, min(a + step, total)).nbytes
        result = {}
    else:
        report = differ.diff(ref, cand, kernel="numpy" if mode == "diff-numpy" else None)
        nbytes = report.summary["positions"] * report.reference["vocab_size"] * 4 * 2
        result = {"kl_mean": report.summary["kl"]["mean"], "top1": report.summary["top1_agreement"]}
    dt = time.perf_counter() - t
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child would report
    # the peak of the parent that built the stores.
    status = Path("/proc/self/status").read_text().splitlines()
    rss = int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024
    print(json.dumps({"seconds": dt, "bytes": nbytes, "peak_rss_mib": rss, **result}))


def run_child(mode: str, ref: Path, cand: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(ref), str(cand)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_check() -> tuple[float, list[str]]:
    code = ("import sys, time; t = time.perf_counter(); import differ; dt = time.perf_counter() - t; "
            "print(dt); print(','.join(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    lines = out.stdout.splitlines()
    return float(lines[0]), [m for m in (lines[1] if len(lines) > 1 else "").split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=0.5, help="raw float32 size of each store (GiB)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="build (or reuse) the stores under this directory")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="parity-bench-"))
    try:
        existing = sorted(work.glob("*.parity.zarr")) if args.keep else []
        if len(existing) == 2:
            from schemas.store import Store

            a, b = existing
            ref, cand = (a, b) if Store.open(b).manifest.run.get("golden") else (b, a)
        else:
            t = time.perf_counter()
            ref, cand = build(work, args.gib, args.vocab, args.sequences)
            print(f"built two stores of {args.gib:g} GiB raw each in {time.perf_counter() - t:.1f}s under {work}")
        on_disk = sum(f.stat().st_size for p in (ref, cand) for f in p.rglob("*") if f.is_file())
        from differ.metrics import DEFAULT_KERNEL

        modes = ("read", "diff", "diff-numpy")
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeat):  # interleaved: machine noise hits every mode alike
            for m in modes:
                runs[m].append(run_child(m, ref, cand))
        rd, df, dn = (min(runs[m], key=lambda r: r["seconds"]) for m in modes)
        mb = rd["bytes"] / 1e6
        print(f"decoded bytes (both stores): {mb:.0f} MB ({on_disk / 1e6:.0f} MB on disk); best of {args.repeat}")
        print(f"read+decode both stores: {rd['seconds']:.2f}s  {mb / rd['seconds']:.0f} MB/s  peak RSS {rd['peak_rss_mib']:.0f} MiB")
        print(f"diff ({DEFAULT_KERNEL} kernel):     {df['seconds']:.2f}s  {mb / df['seconds']:.0f} MB/s  peak RSS {df['peak_rss_mib']:.0f} MiB")
        print(f"diff (numpy kernel):     {dn['seconds']:.2f}s  {mb / dn['seconds']:.0f} MB/s  "
              f"(ratio {dn['seconds'] / rd['seconds']:.2f}; the {DEFAULT_KERNEL} kernel is {dn['seconds'] / df['seconds']:.2f}x faster end to end)")
        ratio = df["seconds"] / rd["seconds"]
        print(f"ratio diff_time / read_time: {ratio:.2f}  (target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})")
        print(f"peak RSS of diff: {df['peak_rss_mib']:.0f} MiB  (target < 512: {'ok' if df['peak_rss_mib'] < 512 else 'MISSED'})")
        dt, heavy = import_check()
        print(f"import differ: {dt * 1000:.0f} ms, torch/vllm modules loaded: {heavy or 'none'}")
        print(f"(kl mean {df['kl_mean']:.3g}, top-1 {df['top1']:.4f})")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
