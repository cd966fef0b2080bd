"""Recording overhead: full-vocab capture vs plain vLLM generation, side by side.

Prints, for a tiny local Llama with a 32,000-token vocabulary (--vocab:
another width, e.g. 128256 for Llama 3's):
- tokens/s of plain generation (no logprobs, default engine settings apart
  from the in-process engine the recorder also uses) and of `record`, each the
  best of --repeat interleaved runs, engine start excluded; and their ratio
  (target >= 0.8);
- the public full-vocab path (`logprobs=-1`) on a short run, for scale;
- peak RSS of a recording and of a 4x longer one (target: within 10%);
- bytes per stored logit (target <= 3.4).

With --breakdown (in-process engine only) it also says where a recorded
row's cost goes, measured inside the run: the engine thread's time per row in
the capture processor (log-softmax, copy into the shard buffer, NaN/inf
check) and how long it waited on the writer, the writer's CPU per row
(encode, crc32c, file write, digest), and the ratio with the writer's shard
files stubbed out (capture alone). Stubs are this script's monkeypatches,
never the recorder's code paths.

Usage: python bench/record_overhead.py [--prompts 4] [--tokens 128] [--repeat 5] [--vocab 128256] [--breakdown]
       python bench/record_overhead.py --tp 2    # multi-worker engines only: rows
                                                 # captured and written in the output worker

Two-core machines are noisy (the same run varies by 1.5x): the ratios use the
best of each mode, and the median of the ratios of runs taken back to back is
printed beside them.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB = 32000
PROMPTS = ["Hello, my name is", "The capital of France is", "Once upon a time", "In the beginning"]


def _env(cache: Path) -> None:
    os.environ.setdefault("PARITY_CACHE", str(cache))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def plain_generation(model: Path, prompts: list[str], tokens: int, public_logprobs: bool = False,
                     max_num_seqs: int | None = None, tp: int = 1) -> float:
    from vllm import LLM, SamplingParams

    extra = {"max_logprobs": -1} if public_logprobs else {}
    if max_num_seqs:
        extra["max_num_seqs"] = max_num_seqs
    if tp > 1:
        from parity.recorder import EngineOptions, get_profile

        # The thread binding the recorder uses, so both sides run alike.
        os.environ.update(get_profile("cpu").environment(EngineOptions(tp=tp), full_vocab=True))
        extra["tensor_parallel_size"] = tp
    llm = LLM(model=str(model), enforce_eager=True, max_model_len=1024, dtype="float32", seed=0, **extra)
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True,
                            logprobs=-1 if public_logprobs else None)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    gc.collect()
    return n / elapsed


def recorded_generation(model: Path, prompts: list[str], tokens: int, out: Path, prompt_logprobs: bool,
                        batch: int = 1, tp: int = 1):
    from parity.recorder import EngineOptions, RecordConfig, record

    res = record(RecordConfig(model=str(model), prompts=prompts, max_tokens=tokens, out=out,
                              prompt_logprobs=prompt_logprobs,
                              engine=EngineOptions(max_model_len=1024, batch=batch, tp=tp)))
    gc.collect()
    return res.manifest.generated_positions / res.timings["record_s"], res


def bytes_per_logit(store_path: Path, manifest) -> float:
    files = [p for p in (store_path / "logprobs").rglob("*") if p.is_file() and p.name != "zarr.json"]
    rows = manifest.generated_positions
    return sum(p.stat().st_size for p in files) / (rows * manifest.vocab_size)


class Breakdown:
    """Per-row timings of one recording, taken by wrapping the recorder's own functions."""

    def __init__(self):
        self.t = {"apply": 0.0, "wait": 0.0, "writer_cpu": 0.0, "encode": 0.0, "write": 0.0, "digest": 0.0}
        self.rows = 0
        self.undo: list = []

    def wrap(self, owner, name: str, make) -> None:
        original = getattr(owner, name)
        setattr(owner, name, make(original))
        self.undo.append((owner, name, original))

    def install(self, stub_files: bool = False) -> "Breakdown":
        import threading

        import parity.recorder.capture as capture
        import parity.schemas.digest as digest
        import parity.schemas.shards as shards
        import parity.schemas.writer as writer

        t, lock = self.t, threading.Lock()

        def add(key: str, dt: float) -> None:
            with lock:
                t[key] += dt

        def timed_apply(original):
            def apply(proc, logits):
                start = time.perf_counter()
                out = original(proc, logits)
                add("apply", time.perf_counter() - start)
                with lock:
                    self.rows += len(proc.rows)
                return out
            return apply

        def timed_submit(original):
            def submit(stream, rows, fn, *args):
                start = time.perf_counter()
                while len(stream.pending) >= stream.max_pending:
                    stream.pending.pop(0).result()
                add("wait", time.perf_counter() - start)
                return original(stream, rows, fn, *args)
            return submit

        def timed_write(original):
            def write(files, first, block, shard_rows):
                cpu = time.thread_time()
                if not stub_files:
                    encode = files.blosc.encode

                    def timed_encode(buf):
                        start = time.perf_counter()
                        out = encode(buf)
                        add("encode", time.perf_counter() - start)
                        return out
                    files.blosc.encode = timed_encode
                    start = time.perf_counter()
                    try:
                        original(files, first, block, shard_rows)
                    finally:
                        del files.blosc.encode
                    add("write", time.perf_counter() - start)
                add("writer_cpu", time.thread_time() - cpu)
            return write

        def timed_digest(original):
            def update(hashers, seq, rows):
                cpu = time.thread_time()
                original(hashers, seq, rows)
                add("digest", time.thread_time() - cpu)
                add("writer_cpu", time.thread_time() - cpu)
            return update

        self.wrap(capture.CaptureProcessor, "apply", timed_apply)
        self.wrap(writer._RowStream, "_submit", timed_submit)
        self.wrap(shards._ShardFiles, "write", timed_write)
        self.wrap(digest.BlockHashers, "update", timed_digest)
        return self

    def remove(self) -> None:
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)
        self.undo.clear()

    def per_row_us(self) -> dict[str, float]:
        n = max(self.rows, 1)
        out = {k: v / n * 1e6 for k, v in self.t.items()}
        # write includes encode; shown apart
        out["write"] -= out["encode"]
        return out


def breakdown(model: Path, prompts: list[str], tokens: int, repeat: int, work: Path, vocab: int) -> None:
    """Plain vs recorded (batch all) with per-row timings, and with the shard files stubbed out."""
    n = len(prompts)
    runs: dict[str, list[float]] = {"plain": [], "rec": [], "stub": []}
    timings: dict[str, list[dict]] = {"rec": [], "stub": []}
    for i in range(repeat):
        runs["plain"].append(plain_generation(model, prompts, tokens))
        for mode in ("rec", "stub"):
            probe = Breakdown().install(stub_files=mode == "stub")
            try:
                runs[mode].append(recorded_generation(model, prompts, tokens, work / f"{mode}{i}", False,
                                                      batch=n)[0])
            finally:
                probe.remove()
            timings[mode].append(probe.per_row_us())
    plain = max(runs["plain"])
    print(f"breakdown, batch {n}, vocab {vocab}: best of {repeat}; times per recorded row, median of runs")
    for mode, label in (("rec", "record"), ("stub", "record, shard files stubbed (capture alone)")):
        med = {k: sorted(t[k] for t in timings[mode])[len(timings[mode]) // 2] for k in timings[mode][0]}
        print(f"  {label:<44} {max(runs[mode]):7.1f} tok/s  ratio {max(runs[mode]) / plain:5.2f}x")
        print(f"    engine thread: capture {med['apply']:6.0f} us/row (of which waiting on the writer {med['wait']:5.0f})")
        if mode == "rec":
            print(f"    writer thread: {med['writer_cpu']:6.0f} us/row CPU: encode {med['encode']:5.0f}, crc32c + file "
                  f"write {med['write']:5.0f}, digest {med['digest']:4.0f} (wall)")
    per_token_us = 1e6 / plain
    print(f"  plain generation: {per_token_us:6.0f} us/token at {plain:.0f} tok/s")


def rss_child(tokens: int, n_prompts: int, out: str, vocab: int) -> None:
    from parity.recorder.tinymodel import tiny_model_dir

    model = tiny_model_dir(Path(os.environ["PARITY_CACHE"]), vocab_size=vocab)
    recorded_generation(model, (PROMPTS * n_prompts)[:n_prompts], tokens, Path(out), True)
    status = Path("/proc/self/status").read_text()
    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"peak_rss_kib": int(hwm.split()[1])}))


def measure_rss(tokens: int, n_prompts: int, out: Path, vocab: int) -> int:
    cmd = [sys.executable, __file__, "--rss-child", str(tokens), "--prompts", str(n_prompts), "--out", str(out),
           "--vocab", str(vocab)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_kib"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rss-child", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tp", type=int, default=1, help="compare at this tensor-parallel size only (worker capture)")
    ap.add_argument("--vocab", type=int, default=VOCAB, help="the tiny model's vocabulary (Llama 3: 128256)")
    ap.add_argument("--breakdown", action="store_true", help="only: where a recorded row's time goes (batch all)")
    args = ap.parse_args()
    cache = Path(os.environ.get("PARITY_CACHE") or Path(tempfile.gettempdir()) / "parity-bench-cache")
    _env(cache)
    if args.rss_child is not None:
        rss_child(args.rss_child, args.prompts, args.out, args.vocab)
        return

    from parity.recorder.tinymodel import tiny_model_dir

    model = tiny_model_dir(cache, vocab_size=args.vocab)
    prompts = (PROMPTS * args.prompts)[: args.prompts]
    work = Path(tempfile.mkdtemp(prefix="parity-bench-"))
    if args.breakdown:
        breakdown(model, prompts, args.tokens, args.repeat, work, args.vocab)
        shutil.rmtree(work, ignore_errors=True)
        return
    if args.tp > 1:
        compare_workers(model, prompts, args.tokens, args.repeat, args.tp, work, args.vocab)
        shutil.rmtree(work, ignore_errors=True)
        return
    runs: dict[str, list[float]] = {k: [] for k in ("plain", "plain1", "rec", "rec1", "rec1p")}
    last = None
    n = len(prompts)
    for i in range(args.repeat):
        runs["plain"].append(plain_generation(model, prompts, args.tokens))
        runs["rec"].append(recorded_generation(model, prompts, args.tokens, work / f"b{i}", False, batch=n)[0])
        runs["plain1"].append(plain_generation(model, prompts, args.tokens, max_num_seqs=1))
        tps, last = recorded_generation(model, prompts, args.tokens, work / f"r{i}", prompt_logprobs=False)
        runs["rec1"].append(tps)
        runs["rec1p"].append(recorded_generation(model, prompts, args.tokens, work / f"p{i}", True)[0])
    public = plain_generation(model, prompts[:1], 8, public_logprobs=True)

    best = {k: max(v) for k, v in runs.items()}
    label = {
        "plain": "plain generation, default engine (batch all)",
        "rec": f"record --batch {n}, generated rows",
        "plain1": "plain generation, max_num_seqs=1",
        "rec1": "record --batch 1 (default), generated rows",
        "rec1p": "record --batch 1, + prompt rows",
    }
    print(f"model: tiny Llama, vocab {args.vocab}; {n} prompts x {args.tokens} tokens; best of {args.repeat}; engine start excluded")
    for k in ("plain", "rec", "plain1", "rec1", "rec1p"):
        print(f"{label[k]:<46} {best[k]:8.1f} tok/s   runs {[round(x) for x in runs[k]]}")
    print(f"{'public logprobs=-1 path (1 x 8 tokens)':<46} {public:8.1f} tok/s")
    paired = sorted(r / p for r, p in zip(runs["rec"], runs["plain"]))
    target = "0.95 (Llama 3 vocabulary)" if args.vocab >= 100_000 else "0.80"
    print(f"{'ratio record/plain, same batching (all)':<46} {best['rec'] / best['plain']:8.2f}x   (target >= {target})")
    print(f"{'  median of back-to-back run ratios':<46} {paired[len(paired) // 2]:8.2f}x")
    print(f"{'ratio record/plain, batch 1':<46} {best['rec1'] / best['plain1']:8.2f}x   (target >= {target})")
    print(f"{'ratio record+prompt/plain, batch 1':<46} {best['rec1p'] / best['plain1']:8.2f}x")
    print(f"{'ratio record batch 1 / plain default':<46} {best['rec1'] / best['plain']:8.2f}x")
    print(f"{'ratio public/plain default':<46} {public / best['plain']:8.3f}x")
    bpl = bytes_per_logit(last.path, last.manifest)
    print(f"bytes per stored logit (lossless)       {bpl:8.2f}     (float32 = 4.00; target <= 3.4)")

    short = measure_rss(args.tokens, args.prompts, work / "rss-short", args.vocab)
    long = measure_rss(args.tokens * 4, args.prompts, work / "rss-long", args.vocab)
    print(f"peak RSS, {args.tokens} tokens/prompt            {short / 1024:8.1f} MiB")
    print(f"peak RSS, {args.tokens * 4} tokens/prompt            {long / 1024:8.1f} MiB")
    print(f"ratio long/short peak RSS               {long / short:8.3f}x   (target <= 1.10)")
    shutil.rmtree(work, ignore_errors=True)


def compare_workers(model: Path, prompts: list[str], tokens: int, repeat: int, tp: int, work: Path,
                    vocab: int = VOCAB) -> None:
    """Plain generation vs recording with --tp N, interleaved: rows captured and written in the output worker."""
    n = len(prompts)
    plain, rec = [], []
    for i in range(repeat):
        plain.append(plain_generation(model, prompts, tokens, tp=tp, max_num_seqs=n))
        tps, res = recorded_generation(model, prompts, tokens, work / f"tp{i}", False, batch=n, tp=tp)
        rec.append(tps)
    print(f"model: tiny Llama, vocab {vocab}; {n} prompts x {tokens} tokens; --tp {tp} "
          f"(executor {res.manifest.run['executor']}, capture {res.manifest.run['capture']}); best of {repeat}")
    print(f"{'plain generation, tp ' + str(tp):<46} {max(plain):8.1f} tok/s   runs {[round(x) for x in plain]}")
    print(f"{'record, tp ' + str(tp) + ', generated rows':<46} {max(rec):8.1f} tok/s   runs {[round(x) for x in rec]}")
    paired = sorted(r / p for r, p in zip(rec, plain))
    print(f"{'ratio record/plain, tp ' + str(tp):<46} {max(rec) / max(plain):8.2f}x")
    print(f"{'  median of back-to-back run ratios':<46} {paired[len(paired) // 2]:8.2f}x")


if __name__ == "__main__":
    main()
