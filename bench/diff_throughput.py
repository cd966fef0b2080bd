"""Throughput of `parity diff` and `parity verify` against merely reading the stores.

Builds two synthetic full-vocabulary stores (reference and a perturbed
candidate on the same forced trajectory), then runs each measurement in a
fresh process, interleaved (machine noise hits every mode alike), and keeps
the best of --repeat:

- floor:      one thread reads every shard file chunk by chunk into one reused
              buffer and Blosc-decodes each chunk with numcodecs into one
              reused chunk buffer: no checksum, no assembly of rows. Nothing
              that reads the rows can be faster on one core.
- fast read:  both stores read block by block (the diff's block size) through
              ``Store.rows`` on one thread: the shard reader, with crc32c.
- zarr read:  the same with PARITY_FAST_READ=0 (zarr reads every chunk).
- diff:       ``differ.diff`` with the C kernel; and with PARITY_FAST_READ=0.
- verify:     ``Store.verify`` of both stores; and with PARITY_FAST_READ=0.

Prints seconds, MB/s of decoded rows, peak RSS of each, and the ratios the
goals are set on: diff / floor (<= 1.4 on 2 cores, with its digest checks), diff / zarr read
(<= 1.0), verify / diff (verify at the diff's rate); the diff's peak RSS
(< 512 MiB) is also taken on stores 4x smaller, to show it does not grow with
the store. A kernel line times the C kernel alone on rows already in memory
(one thread, scaled to the store's row pairs): every worker reads and
compares its own blocks, so (floor + kernel) / cores bounds what any diff
can reach on this many cores.

    .venv/bin/python bench/diff_throughput.py [--gib 0.5] [--vocab 39000] [--keep DIR] [--numpy]
"""

from __future__ import annotations

import argparse
import json
import os
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
    from parity.differ.testing import StoreSpec, build_manifest, log_softmax, SeqData
    from parity.schemas import GENERATED, StoreWriter
    from parity.settings import settings

    out.mkdir(parents=True, exist_ok=True)
    rows = max(int(gib * (1 << 30) / (4 * vocab)), seqs)
    per_seq = rows // seqs
    rng = np.random.default_rng(0)
    prompt = [1, 2, 3]
    block = 128
    tokens = []
    ref_w = StoreWriter(out, vocab_size=vocab, direct_io=settings().direct_io)
    cand_w = StoreWriter(out, vocab_size=vocab, direct_io=settings().direct_io)
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


def stores_under(work: Path) -> tuple[Path, Path] | None:
    from parity.schemas import Store
    from parity.settings import settings

    existing = sorted(work.glob("*.parity.zarr"))
    if len(existing) != 2:
        return None
    a, b = existing
    return (a, b) if Store.open(b, fast_read=settings().fast_read).manifest.run.get("golden") else (b, a)


def floor(paths: list[str]) -> int:
    """Reads and Blosc-decodes every chunk of every row array, on this thread; returns decoded bytes."""
    from numcodecs import blosc

    from parity.schemas.shards import EMPTY, ArrayReader

    buf = np.empty(0, np.uint8)
    nbytes = 0
    for path in paths:
        reader = ArrayReader.open(Path(path) / "logprobs")
        chunk = np.empty((reader.chunk_rows, *reader.row_shape), reader.dtype)
        for i in reader.files_for(0, reader.shape[0]):
            fd = os.open(reader.file_path(i), os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                raw = os.pread(fd, reader.index_nbytes, size - reader.index_nbytes)
                index = np.frombuffer(raw, "<u8", count=2 * reader.chunks_per_file).reshape(-1, 2)
                for offset, length in index.tolist():
                    if offset == EMPTY:
                        continue
                    if buf.size < length:
                        buf = np.empty(length, np.uint8)
                    os.preadv(fd, [buf[:length]], offset)
                    blosc.decompress(buf[: length - 4], chunk)
                    nbytes += chunk.nbytes
            finally:
                os.close(fd)
    return nbytes


def child(mode: str, ref: str, cand: str) -> None:
    from parity.schemas import GENERATED, Store
    from parity.settings import settings
    from parity import differ
    from parity.differ.stream import block_rows_for

    t = time.perf_counter()
    nbytes = 0
    result = {}
    scale = 1.0
    if mode == "floor":
        nbytes = floor([ref, cand])
    elif mode in ("fast-read", "zarr-read"):
        fast = settings().fast_read
        stores = [Store.open(ref, fast_read=fast), Store.open(cand, fast_read=fast)]
        step = block_rows_for(stores[0].vocab_size, True)
        total = int(stores[0].row_offsets(GENERATED)[-1])
        for a in range(0, total, step):
            for st in stores:
                nbytes += st.rows(GENERATED, a, min(a + step, total)).nbytes
    elif mode == "kernel":
        from parity.differ import metrics

        st = Store.open(ref, fast_read=settings().fast_read), Store.open(cand, fast_read=settings().fast_read)
        total = int(st[0].row_offsets(GENERATED)[-1])
        x, y = (s.rows(GENERATED, 0, min(256, total)) for s in st)
        t = time.perf_counter()  # the kernel alone, on rows already in memory
        metrics.full_block(x, y, 1e-3)
        scale = total / len(x)
        nbytes = total * x.shape[1] * 8
    elif mode.startswith("verify"):
        for p in (ref, cand):
            st = Store.open(p, fast_read=settings().fast_read)
            st.verify()
            nbytes += int(st.row_offsets(GENERATED)[-1]) * st.vocab_size * 4
    else:
        if mode == "diff-unchecked":
            # What the diff cost before it checked what it reads (issue 23): the
            # same diff with the digest checks switched off in this process only.
            import functools

            from parity.differ import api

            api.stream = functools.partial(api.stream, check=False)
            api.check_opened = lambda store: None
        report = differ.diff(ref, cand, kernel="numpy" if mode == "diff-numpy" else None)
        nbytes = report.summary["positions"] * report.reference["vocab_size"] * 4 * 2
        result = {"kl_mean": report.summary["kl"]["mean"], "top1": report.summary["top1_agreement"]}
    dt = (time.perf_counter() - t) * scale
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child would report
    # the peak of the parent that built the stores.
    status = Path("/proc/self/status").read_text().splitlines()
    rss = int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024
    print(json.dumps({"seconds": dt, "bytes": nbytes, "peak_rss_mib": rss, **result}))


# mode -> PARITY_FAST_READ for the child
MODES = {"floor": "1", "kernel": "1", "fast-read": "1", "zarr-read": "0", "diff": "1", "diff-unchecked": "1",
         "diff-zarr": "0", "verify": "1", "verify-zarr": "0", "diff-numpy": "1"}


def run_child(mode: str, ref: Path, cand: Path) -> dict:
    env = {**os.environ, "PARITY_FAST_READ": MODES[mode]}
    env.pop("PARITY_DIFF_KERNEL", None)
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(ref), str(cand)],
                         capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_check() -> tuple[float, list[str]]:
    code = ("import sys, time; t = time.perf_counter(); import parity.differ; dt = time.perf_counter() - t; "
            "print(dt); print(','.join(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    lines = out.stdout.splitlines()
    return float(lines[0]), [m for m in (lines[1] if len(lines) > 1 else "").split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=0.5, help="raw float32 size of each store (GiB)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--numpy", action="store_true", help="also time the numpy kernel")
    ap.add_argument("--keep", type=Path, help="build (or reuse) the stores under this directory")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="parity-bench-"))
    try:
        t = time.perf_counter()
        big = stores_under(work / "full") or build(work / "full", args.gib, args.vocab, args.sequences)
        small = stores_under(work / "quarter") or build(work / "quarter", args.gib / 4, args.vocab, args.sequences)
        if time.perf_counter() - t > 1:
            print(f"built the stores ({args.gib:g} and {args.gib / 4:g} GiB raw each) in "
                  f"{time.perf_counter() - t:.1f}s under {work}")
        ref, cand = big
        on_disk = sum(f.stat().st_size for p in (ref, cand) for f in p.rglob("*") if f.is_file())
        from parity.differ.metrics import DEFAULT_KERNEL

        modes = [m for m in MODES if m != "diff-numpy" or args.numpy]
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for m in modes:
                runs[m].append(run_child(m, ref, cand))
        best = {m: min(runs[m], key=lambda r: r["seconds"]) for m in modes}
        small_diff = min((run_child("diff", *small) for _ in range(args.repeat)), key=lambda r: r["seconds"])

        mb = best["fast-read"]["bytes"] / 1e6
        print(f"vocab {args.vocab}; decoded rows, both stores: {mb:.0f} MB ({on_disk / 1e6:.0f} MB on disk); "
              f"{os.cpu_count()} cores; best of {args.repeat}, interleaved")
        label = {
            "floor": "floor: 1 thread, shard files, numcodecs",
            "kernel": "C kernel alone, 1 thread (scaled)",
            "fast-read": "fast read (Store.rows, 1 thread)",
            "zarr-read": "zarr read (PARITY_FAST_READ=0)",
            "diff": f"diff ({DEFAULT_KERNEL} kernel)",
            "diff-unchecked": "diff without its digest checks",
            "diff-zarr": f"diff ({DEFAULT_KERNEL}), PARITY_FAST_READ=0",
            "verify": "verify both stores",
            "verify-zarr": "verify, PARITY_FAST_READ=0",
            "diff-numpy": "diff (numpy kernel)",
        }
        for m in modes:
            r = best[m]
            print(f"  {label[m]:<42} {r['seconds']:6.2f}s {mb / r['seconds']:7.0f} MB/s  "
                  f"peak RSS {r['peak_rss_mib']:4.0f} MiB   runs {[round(x['seconds'], 2) for x in runs[m]]}")
        s = {m: best[m]["seconds"] for m in modes}

        def ratio(name: str, value: float, goal: str = "", ok: bool | None = None) -> None:
            verdict = "" if ok is None else f"  (goal {goal}: {'ok' if ok else 'MISSED'})"
            print(f"  {name:<42} {value:6.2f}{verdict}")

        print("ratios")
        ratio("diff / floor", s["diff"] / s["floor"], f"<= 1.4 on 2 cores, {os.cpu_count()} here",
              s["diff"] / s["floor"] <= 1.4)
        ratio("diff without its digest checks / floor", s["diff-unchecked"] / s["floor"])
        ratio("digest checks: diff / unchecked diff", s["diff"] / s["diff-unchecked"])
        cores = os.cpu_count() or 1
        # Every worker reads and computes its own blocks, so both parts spread
        # over the cores: no diff does better than their sum shared out.
        bound = (s["floor"] + s["kernel"]) / cores / s["floor"]
        ratio(f"bound: (floor + kernel) / {cores} / floor", bound)
        ratio("diff / zarr read", s["diff"] / s["zarr-read"], "<= 1.0", s["diff"] / s["zarr-read"] <= 1.0)
        ratio("diff / fast read", s["diff"] / s["fast-read"])
        ratio("fast read / floor", s["fast-read"] / s["floor"])
        ratio("zarr read / floor", s["zarr-read"] / s["floor"])
        ratio("diff before / diff (PARITY_FAST_READ=0/1)", s["diff-zarr"] / s["diff"])
        ratio("verify / diff (the same rate: <= 1.0)", s["verify"] / s["diff"], "<= 1.0", s["verify"] / s["diff"] <= 1.0)
        ratio("verify / fast read", s["verify"] / s["fast-read"])
        ratio("verify before / verify", s["verify-zarr"] / s["verify"])
        if args.numpy:
            ratio(f"numpy kernel / {DEFAULT_KERNEL} kernel, end to end", s["diff-numpy"] / s["diff"])
        rss, rss_small = best["diff"]["peak_rss_mib"], small_diff["peak_rss_mib"]
        print(f"peak RSS of diff: {rss:.0f} MiB; on stores 4x smaller: {rss_small:.0f} MiB "
              f"(goal < 512 and flat: {'ok' if rss < 512 and rss <= 1.15 * rss_small + 16 else 'MISSED'})")
        dt, heavy = import_check()
        print(f"import parity.differ: {dt * 1000:.0f} ms, torch/vllm modules loaded: {heavy or 'none'}")
        print(f"(kl mean {best['diff']['kl_mean']:.3g}, top-1 {best['diff']['top1']:.4f}; "
              f"before: kl mean {best['diff-zarr']['kl_mean']:.3g}, top-1 {best['diff-zarr']['top1']:.4f})")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
