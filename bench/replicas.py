"""Speed-up of `parity record --replicas N` over one engine at equal total threads, side by side.

Runs the same recording two ways, each as a whole `parity record` command in
a fresh process with its own fresh --out directory:

- one engine:  `--replicas 1`; vLLM binds its threads to every CPU this
               script may use (os.sched_getaffinity(0)).
- replicas:    `--replicas N`; parity splits the same CPUs into N disjoint
               groups, one engine per group, each recording a share of the
               prompts, then merges the shares into one store.

The two alternate (one engine, replicas, one engine, ...) --repeat times, so
machine noise hits both alike. The headline is the whole command's wall time
(process start, imports, engine start, generation, merge): best and median of
each, and the speed-up one engine / replicas (> 1: the replicas are faster),
of the bests and of the medians. The first pair also pays a cold page cache;
on a shared machine read the bests. With the embedded tiny model the start of
the processes and engines (tens of seconds, each replica's on its own fewer
CPUs) weighs as much as generating, so the whole command gains less than the
engines do.

Below it, the generate phase alone, from the stores' own timings: the single
engine's `run.timings.generate_s`, against the replicas' (the slowest share's
generation: they run side by side). The replicas' `run.timings.wall_s` is
their wall time including their processes' and engines' start; it is shown
too.

Last, whether the two stores have the same content digest. They may differ:
an engine with fewer threads reduces floats in another order. This is
reported, not judged.

    .venv/bin/python bench/replicas.py [--replicas 2] [--repeat 3] [--num-prompts 16] [--max-tokens 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parity.recorder.devices.cpu import THREADS_BIND, cpu_list  # noqa: E402


def parity_command() -> list[str]:
    script = Path(sys.executable).parent / "parity"
    if script.exists():
        return [str(script)]
    found = shutil.which("parity")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from parity.cli import main; sys.argv[0] = 'parity'; sys.exit(main())"]


def child_env() -> dict[str, str]:
    env = {**os.environ, "PARITY_NO_PROGRESS": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
    # parity splits the CPUs itself; a user's binding would give the two sides other threads.
    env.pop(THREADS_BIND, None)
    return env


def record_once(replicas: int, args, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"r{replicas}-", dir=work))
    cmd = [*parity_command(), "record", "--out", str(out), "--model", args.model, "--suite", args.suite,
           "--num-prompts", str(args.num_prompts), "--max-tokens", str(args.max_tokens),
           "--max-model-len", str(args.max_model_len), "--replicas", str(replicas)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}")
    store = proc.stdout.strip().splitlines()[-1]
    shown = subprocess.run([*parity_command(), "show", "--json", store], capture_output=True, text=True,
                           cwd=ROOT, env=child_env(), check=True)
    manifest = json.loads(shown.stdout)
    timings = manifest.get("run", {}).get("timings", {})
    # Each share's own figures and CPUs, from the merged manifest (run.shares).
    shares = [{"share": sh["index"], "sequences": len(sh["sequences"]),
               "generate_s": (sh.get("timings") or {}).get("generate_s"),
               "tokens_per_s": (sh.get("timings") or {}).get("generated_tokens_per_s"),
               "where": f"CPUs {(sh.get('env') or {}).get('VLLM_CPU_OMP_THREADS_BIND', 'unbound')}"}
              for sh in manifest.get("run", {}).get("shares", [])]
    generated = sum(s.get("generated_len", 0) for s in manifest.get("sequences", []))
    # With replicas, run.timings.generate_s is the slowest share's: they ran side by side.
    generate_s = timings.get("generate_s")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "digest": manifest.get("digest"), "timings": timings, "generated": generated,
            "generate_s": generate_s, "shares": sorted(shares, key=lambda s: s["share"]), "store": store}


def summary(values: list[float | None]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"best": None, "median": None}
    return {"best": min(vals), "median": statistics.median(vals)}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(x: float | None, spec: str = "7.2f", unit: str = "s") -> str:
    return "?".rjust(len(format(0.0, spec))) + " " * len(unit) if x is None else f"{x:{spec}}{unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2, help="engines of the replicas side")
    ap.add_argument("--model", default="tiny", help="as `parity record --model` (default: the embedded tiny model)")
    ap.add_argument("--vocab", type=int, default=None,
                    help="the tiny model built with this vocabulary instead (Llama 3: 128256): full-vocabulary rows "
                         "as wide as a real model's, so capturing and writing them weighs as it does there")
    ap.add_argument("--suite", default="default", help="prompt suite of `parity record`")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="pairs of runs (one engine, replicas), alternated")
    ap.add_argument("--keep", action="store_true", help="keep the stores (their directories are printed)")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    args = ap.parse_args()
    if args.vocab is not None:
        from parity.recorder.tinymodel import tiny_model_dir
        from parity.settings import settings

        args.model = str(tiny_model_dir(settings().cache_dir, vocab_size=args.vocab))
    if args.replicas < 2:
        ap.error("--replicas must be at least 2")

    cpus = sorted(os.sched_getaffinity(0))
    note = sys.stderr if args.json else sys.stdout
    if THREADS_BIND in os.environ:
        print(f"note: {THREADS_BIND} is set; ignored here so that both sides use parity's own binding", file=note)
    if len(cpus) < args.replicas:
        print(f"note: {len(cpus)} CPUs for {args.replicas} replicas: the replicas share CPUs (unbound threads)",
              file=note)
    work = Path(tempfile.mkdtemp(prefix="parity-bench-replicas-"))
    runs: dict[str, list[dict]] = {"one": [], "replicas": []}
    try:
        for i in range(args.repeat):
            for side, n in (("one", 1), ("replicas", args.replicas)):
                r = record_once(n, args, work)
                runs[side].append(r)
                if not args.json:
                    print(f"  run {i + 1}/{args.repeat} {'one engine' if n == 1 else f'{n} replicas':<12} "
                          f"{r['wall_s']:7.2f}s wall, generate {fmt(r['generate_s'])}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    report(args, cpus, runs)
    if args.keep:
        print(f"stores kept under {work}", file=note)


def report(args, cpus: list[int], runs: dict[str, list[dict]]) -> None:
    wall = {side: summary([r["wall_s"] for r in rs]) for side, rs in runs.items()}
    gen = {side: summary([r["generate_s"] for r in rs]) for side, rs in runs.items()}
    start = {side: summary([r["timings"].get("engine_start_s") for r in rs]) for side, rs in runs.items()}
    manifest_gen = summary([r["timings"].get("wall_s") for r in runs["replicas"]])
    pair_ratios = [ratio(a["wall_s"], b["wall_s"]) for a, b in zip(runs["one"], runs["replicas"])]
    speedup = {"wall_best": ratio(wall["one"]["best"], wall["replicas"]["best"]),
               "wall_median": ratio(wall["one"]["median"], wall["replicas"]["median"]),
               "wall_median_of_pairs": statistics.median(pair_ratios),
               "generate_best": ratio(gen["one"]["best"], gen["replicas"]["best"]),
               "generate_median": ratio(gen["one"]["median"], gen["replicas"]["median"])}
    digests = {side: sorted({r["digest"] for r in rs}) for side, rs in runs.items()}
    same = digests["one"] == digests["replicas"] and len(digests["one"]) == 1
    replica_cpus = [s["where"] for s in runs["replicas"][-1]["shares"]]
    generated = runs["one"][-1]["generated"]

    if args.json:
        print(json.dumps({
            "cpus": cpus, "replicas": args.replicas,
            "request": {"model": args.model, "suite": args.suite, "num_prompts": args.num_prompts,
                        "max_tokens": args.max_tokens, "max_model_len": args.max_model_len},
            "one_engine_cpus": cpu_list(cpus), "replica_cpus": replica_cpus, "generated_positions": generated,
            "wall_s": wall, "generate_s": gen, "engine_start_s": start, "replicas_manifest_generate_s": manifest_gen,
            "speedup": speedup, "digests": digests, "same_digest": same, "runs": runs,
        }, indent=2))
        return

    n = args.replicas
    print(f"{len(cpus)} CPUs ({cpu_list(cpus)}); model {args.model}, suite {args.suite}, "
          f"{args.num_prompts} prompts x {args.max_tokens} tokens, max-model-len {args.max_model_len}; "
          f"{generated} generated positions; {len(runs['one'])} pairs, alternated")
    print(f"  one engine: CPUs {cpu_list(cpus)} ({len(cpus)} CPUs, vLLM binds its threads to them)")
    print(f"  {n} replicas: " + ("; ".join(f"share {i + 1} on {w}" for i, w in enumerate(replica_cpus))
                                  or "(their CPUs were not reported)"))
    print(f"{'':<30}{'best':>8}{'median':>9}")

    def row(label: str, side: str, s: dict, note: str = "") -> None:
        name = "one engine" if side == "one" else f"{n} replicas"
        print(f"  {label:<15}{name:<13}{fmt(s['best'], '7.2f')}{fmt(s['median'], '8.2f')}{note}")

    row("whole command", "one", wall["one"])
    row("", "replicas", wall["replicas"])
    row("generate", "one", gen["one"])
    row("", "replicas", gen["replicas"], "   slowest share")
    row("engine start", "one", start["one"])
    row("", "replicas", start["replicas"], "   slowest replica")
    row("wall_s", "replicas", manifest_gen, "   manifest: the replicas' wall time, their start included")
    print(f"speed-up, one engine / {n} replicas (> 1: the replicas are faster)")
    print(f"  whole command  {fmt(speedup['wall_best'], '.2f', 'x')} best, {fmt(speedup['wall_median'], '.2f', 'x')} "
          f"median, {fmt(speedup['wall_median_of_pairs'], '.2f', 'x')} median of back-to-back pairs")
    print(f"  generate only  {fmt(speedup['generate_best'], '.2f', 'x')} best, "
          f"{fmt(speedup['generate_median'], '.2f', 'x')} median")
    if same:
        print(f"same content digest: yes ({digests['one'][0]})")
    else:
        print(f"same content digest: no (one engine {', '.join(digests['one'])}; replicas "
              f"{', '.join(digests['replicas'])}); another thread count per engine can change float reduction order")


if __name__ == "__main__":
    main()
