"""The verdict table of the closing note for issue 22, redone with the default workflow.

A tiny Llama trained here (tests/support/variants.py), a float32 CPU golden
recorded with its bf16 noise floor on the default prompt suite, candidates
recorded in bfloat16 on the golden's trajectory; each judged by plain
``parity diff GOLDEN CANDIDATE`` (the floor's per-position gate) and, for
comparison, by the ``--tolerance bf16`` preset with the floor ignored.

    python bench/verdict_table.py --out /tmp/verdicts [--max-model-len 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import variants  # noqa: E402

CANDIDATES = [
    ("same model, hf bf16 (faithful)", None, ["--device", "hf"]),
    ("same model, vLLM bf16 --tp 2 (faithful)", None, ["--tp", "2"]),
    ("final norm x(1+0.05N)", lambda m, d: variants.perturb_final_norm(m, d, 0.05), []),
    ("layer 0 input norm x(1+0.6N)", lambda m, d: variants.perturb_layer_norm(m, d, 0, 0.6), []),
    ("RoPE base 10000 -> 10500", lambda m, d: variants.rope_base(m, d, 10500.0), []),
    ("RoPE base 10000 -> 10100", lambda m, d: variants.rope_base(m, d, 10100.0), []),
]


def parity(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PARITY_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "parity.cli", *args], capture_output=True, text=True, env=env)


def recorded(proc: subprocess.CompletedProcess) -> Path:
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return Path(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-model-len", default="1024")
    ap.add_argument("--max-tokens", default="32")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    model = variants.trained_tiny_model(a.out / "trained")
    golden = recorded(parity("record", "--model", str(model), "--max-model-len", a.max_model_len, "--max-tokens",
                             a.max_tokens, "--floor", "bf16", "--out", str(a.out / "golden")))
    rows = []
    for n, (name, variant, extra) in enumerate(CANDIDATES):
        m = model if variant is None else variant(model, a.out / f"model-{n}")
        cand = recorded(parity("record", "--model", str(m), "--golden", str(golden), "--dtype", "bfloat16", *extra,
                               "--out", str(a.out / f"cand-{n}")))
        parity("diff", str(golden), str(cand), "--json", str(a.out / f"floor-{n}.json"))
        parity("diff", str(golden), str(cand), "--no-floor", "--tolerance", "bf16", "--json",
               str(a.out / f"preset-{n}.json"))
        r = json.loads((a.out / f"floor-{n}.json").read_text())
        p = json.loads((a.out / f"preset-{n}.json").read_text())
        pp = r["floor"]["per_position"]["generated"]
        pr = r["floor"]["per_position"].get("prompt") or {}
        drift = (r.get("kl_by_position") or {}).get("generated") or {}
        rows.append((name, p["verdict"], r["verdict"], r["summary"]["kl"]["p99"], pp["fraction_within"],
                     pp["sigma_ratio_kl"], pp["sigma_ratio_abs"], pr.get("fraction_within"),
                     "; ".join(r["failures"]) or "-", drift.get("drift")))
    s = r["floor"]["generated"]
    print(f"golden {golden.name}: floor (vLLM bf16) generated KL p99 {s['kl_p99']:.2g}, top-1 {s['top1_agreement']:.3f}")
    print("| candidate | `--tolerance bf16` | plain diff (floor) | gen KL p99 | gen within | sigma KL | sigma abs "
          "| prompt within | reasons |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, pv, fv, p99, w, sk, sa, prw, why, _ in rows:
        prw = "-" if prw is None else f"{100 * prw:.1f}%"
        print(f"| {name} | {pv} | **{fv}** | {p99:.2g} | {100 * w:.1f}% | {sk:.2f} | {sa:.2f} | {prw} | {why} |")


if __name__ == "__main__":
    main()
