"""Calibration of the floor verdict: faithful bf16 candidates against known bugs.

A CPU float32 golden carries a floor: the same model recorded in bfloat16 on
the golden's token trajectory. A candidate is judged per position against it
(KL_c <= R * KL_f + eps at a fraction q of positions, |delta|_c <= R *
|delta|_f + eps_abs, sigma ratios). This script measures what those
parameters must be, on a tiny Llama trained here (tests/support/variants.py):

- golden: vLLM CPU float32, full vocabulary, prompt logprobs on; prompts: a
  few short ones and long ones cut to max_model_len - max_tokens tokens;
- floor: vLLM CPU bfloat16 forced on the golden;
- faithful candidates (must pass): transformers (``device="hf"``) bfloat16,
  and vLLM bfloat16 run differently (``--batch``, another KV block size,
  ``--tp 2``):
  bf16 realisations that are not bit-identical to the floor;
- bugged candidates (must fail): rotary base 10000 -> 10500, final norm and
  one layer's input norm scaled by 1 + s*N, each vLLM bfloat16 forced on the
  golden (and subtler versions of each, to find where detection ends).

Every store is diffed against the golden in one pass (``parity.differ.compare``);
the per-position arrays go to OUT/TAG/<label>.npz and the tables, each
candidate set beside the floor, to OUT/TAG/tables.md (and stdout).

Usage: python bench/floor_calibration.py --out /tmp/calib [--max-model-len 1024]
           [--short-prompts 4] [--long-prompts 2] [--max-tokens 32] [--fresh]

Recordings are kept in OUT/stores and listed in OUT/TAG/index.json: a rerun
with the same arguments reuses them (--fresh records again). One engine runs
at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # for tests.support; parity itself as installed

KINDS = ("generated", "prompt")
FIELDS = ("kl", "max_abs", "top1", "ref_conf", "seq", "pos", "ref_top", "cand_top")
RATIOS = (1.5, 2.0, 3.0, 4.0, 8.0)
KL_EPS = (1e-6, 1e-5, 1e-4)
ABS_EPS = (1e-3, 1e-2, 5e-2)
BINS = ((0, 64), (64, 256), (256, 512), (512, None))
BF16_BITS = 7
GARBAGE_RANK = 100

SHORT_PROMPTS = (
    "The lighthouse keeper climbed the",
    "A recipe for bread needs",
    "When two devices run the same model,",
    "The capital of France is",
    "Monday: the train left at",
    "def mean(values):",
)

# Text the model was not trained on: positions where the golden is unsure sit
# beside the memorised ones in the long prompts.
HELD_OUT = (
    """On the island there was one road, one shop and one telephone. The shop sold bread, nails, \
stamps and fishing line, and the telephone hung on the wall behind the counter, so that every call \
was made in front of whoever happened to be buying bread.""",
    """The experiment was repeated three times. The first run gave a mean of four point two, the \
second four point five, and the third four point one. The difference between the runs was smaller \
than the error of the instrument, so the team reported the average and moved on.""",
    """My grandmother kept bees behind the orchard. In June she wore a white hat with a veil and \
walked slowly between the hives, talking to the bees in a low voice, and she said that they always \
knew when somebody in the family had died.""",
    """To replace a bicycle tyre, first let out whatever air is left. Push the bead of the tyre \
into the middle of the rim, lever one side over the edge, and pull the old tube out. Check the \
inside of the tyre for thorns before you fit the new tube.""",
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# prompts ----------------------------------------------------------------------
def long_prompt_text(i: int) -> str:
    """Training paragraphs in an order the model never saw, with held-out ones between them."""
    import random

    from tests.support.variants import PARAGRAPHS

    rng = random.Random(1000 + i)
    train = list(PARAGRAPHS)
    rng.shuffle(train)
    held = list(HELD_OUT)
    rng.shuffle(held)
    parts = []
    for k, p in enumerate(train * 3):
        parts.append(p)
        if k % 3 == 2:
            parts.append(held[(k // 3) % len(held)])
    return "\n\n".join(parts)


def build_prompts(tokenizer, n_short: int, n_long: int, long_len: int) -> list[list[int]]:
    short = [list(tokenizer(SHORT_PROMPTS[i % len(SHORT_PROMPTS)])["input_ids"]) for i in range(n_short)]
    longs = []
    for i in range(n_long):
        ids = list(tokenizer(long_prompt_text(i))["input_ids"])
        if len(ids) < long_len:
            raise SystemExit(f"long prompt {i} has only {len(ids)} tokens, fewer than {long_len}")
        longs.append(ids[:long_len])
    return short + longs


# models -----------------------------------------------------------------------
def build_models(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """The trained model (training seed ``seed``) and its bugged variants (noise seed ``seed``)."""
    from tests.support import variants as v

    t0 = time.perf_counter()
    sfx = f"-s{seed}" if seed else ""
    base = v.trained_tiny_model(models_dir / f"trained{sfx}", seed=seed)
    _log(f"trained model: {base} ({time.perf_counter() - t0:.1f}s; "
         f"{json.loads((base / 'parity-tiny.json').read_text())})")
    return {
        "trained": base,
        "rope_10500": v.rope_base(base, models_dir / f"rope-10500{sfx}", theta=10500.0),
        "rope_10100": v.rope_base(base, models_dir / f"rope-10100{sfx}", theta=10100.0),
        "final_norm_0.05": v.perturb_final_norm(base, models_dir / f"final-norm-0.05{sfx}", scale=0.05, seed=seed),
        "final_norm_0.02": v.perturb_final_norm(base, models_dir / f"final-norm-0.02{sfx}", scale=0.02, seed=seed),
        "layer0_norm_0.6": v.perturb_layer_norm(base, models_dir / f"layer0-norm-0.6{sfx}", layer=0, scale=0.6,
                                                seed=seed),
        "layer1_norm_0.1": v.perturb_layer_norm(base, models_dir / f"layer1-norm-0.1{sfx}", layer=1, scale=0.1,
                                                seed=seed),
    }


# recordings -------------------------------------------------------------------
# label -> (model key, device, dtype, engine option overrides, faithful?)
CANDIDATES = {
    "hf_bf16": ("trained", "hf", "bfloat16", {}, True),
    "vllm_bf16_batch": ("trained", "cpu", "bfloat16", {"batch": 8}, True),
    "vllm_bf16_block32": ("trained", "cpu", "bfloat16", {"block_size": 32}, True),
    "vllm_bf16_tp2": ("trained", "cpu", "bfloat16", {"tp": 2}, True),
    "rope_10500": ("rope_10500", "cpu", "bfloat16", {}, False),
    "rope_10100": ("rope_10100", "cpu", "bfloat16", {}, False),
    "final_norm_0.05": ("final_norm_0.05", "cpu", "bfloat16", {}, False),
    "final_norm_0.02": ("final_norm_0.02", "cpu", "bfloat16", {}, False),
    "layer0_norm_0.6": ("layer0_norm_0.6", "cpu", "bfloat16", {}, False),
    "layer1_norm_0.1": ("layer1_norm_0.1", "cpu", "bfloat16", {}, False),
}


def record_one(label: str, model: Path, device: str, dtype: str, opts: dict, args, stores: Path,
               golden: Path | None = None, prompt_ids=None) -> Path:
    from parity.recorder import EngineOptions, RecordConfig, record

    cfg = RecordConfig(
        model=str(model), device=device, prompt_token_ids=prompt_ids, max_tokens=args.max_tokens,
        prompt_logprobs=True, golden=golden, out=stores,
        engine=EngineOptions(dtype=dtype, max_model_len=args.max_model_len, **opts),
    )
    t0 = time.perf_counter()
    result = record(cfg)
    m = result.manifest
    _log(f"{label}: {m.generated_positions} generated + {m.prompt_positions} prompt positions in "
         f"{time.perf_counter() - t0:.1f}s -> {result.path}")
    return result.path


def record_all(args, models: dict[str, Path], run_dir: Path, stores: Path, only: set[str] | None) -> dict:
    index_path = run_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() and not args.fresh else {}

    def have(label: str) -> bool:
        return label in index and Path(index[label]).exists()

    def save() -> None:
        index_path.write_text(json.dumps(index, indent=2) + "\n")

    if not have("golden"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(models["trained"])
        prompts = build_prompts(tok, args.short_prompts, args.long_prompts, args.max_model_len - args.max_tokens)
        index["golden"] = str(record_one("golden", models["trained"], "cpu", "float32", {}, args, stores,
                                         prompt_ids=prompts))
        # A new golden: every recording on its trajectory is redone.
        index = {"golden": index["golden"]}
        save()
    golden = Path(index["golden"])
    if not have("floor"):
        index["floor"] = str(record_one("floor", models["trained"], "cpu", "bfloat16", {}, args, stores,
                                        golden=golden))
        save()
    for label, (key, device, dtype, opts, _) in CANDIDATES.items():
        if only and label not in only:
            continue
        if not have(label):
            try:
                index[label] = str(record_one(label, models[key], device, dtype, opts, args, stores, golden=golden))
            except Exception as e:  # one candidate that cannot run here must not sink the others
                _log(f"{label}: not recorded: {type(e).__name__}: {e}")
                continue
            save()
    return index


# analysis ---------------------------------------------------------------------
def diff_all(index: dict, labels: list[str]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """label -> kind -> per-position arrays (the floor's label is "floor"), from one compare pass."""
    from parity.differ import compare

    t0 = time.perf_counter()
    stores = ["floor", *labels]
    reports = compare(index["golden"], [index[s] for s in stores])
    _log(f"compare: {len(stores)} stores against the golden in {time.perf_counter() - t0:.1f}s")
    out = {}
    for label, rep in zip(stores, reports, strict=True):
        out[label] = {kind: {f: np.asarray(rep.positions[kind][f]) for f in FIELDS} for kind in KINDS}
    return out


def golden_rows_for(golden_path: str, cand_path: str, kind: str, idx: np.ndarray) -> np.ndarray:
    """The golden's rows at the candidate's compared positions ``idx`` (pair order, as in report.positions)."""
    from parity.differ.plan import build_plan
    from parity.schemas import Store

    golden, cand = Store.open(golden_path), Store.open(cand_path)
    rows = build_plan(golden, cand).pairs[kind].ref[idx]
    return np.stack([golden.rows(kind, int(r), int(r) + 1)[0] for r in rows]) if len(rows) else np.zeros((0, 0))


def flips(index: dict, label: str, kind: str, p: dict) -> list[dict]:
    """Every argmax disagreement: the golden's logprob gap between its top-1
    and the candidate's argmax, that token's rank in the golden row, and the
    gap in bf16 rounding steps at the estimated top logit (top logprob minus
    the row's mean logprob, as the differ estimates it)."""
    idx = np.flatnonzero(~p["top1"].astype(bool))
    if not len(idx):
        return []
    rows = golden_rows_for(index["golden"], index[label], kind, idx).astype(np.float64)
    out = []
    for r, i in zip(rows, idx, strict=True):
        top, cand = int(p["ref_top"][i]), int(p["cand_top"][i])
        gap = float(r[top] - r[cand])
        logit = float(r[top] - r[np.isfinite(r)].mean())
        step = 2.0 ** (math.floor(math.log2(max(abs(logit), 1e-30))) - BF16_BITS)
        out.append({"seq": int(p["seq"][i]), "pos": int(p["pos"][i]), "golden_top": top, "cand_top": cand,
                    "ref_conf": float(p["ref_conf"][i]), "gap": gap, "rank": int(np.count_nonzero(r > r[cand]) + 1),
                    "logit": logit, "steps": gap / step})
    return out


def select(p: dict, seqs: np.ndarray | None) -> dict:
    if seqs is None:
        return p
    m = np.isin(p["seq"], seqs)
    return {k: v[m] for k, v in p.items()}


def join(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def aligned(c: dict, f: dict) -> tuple[dict, dict]:
    """Candidate and floor arrays on the same positions (both forced on the golden: same order)."""
    if len(c["seq"]) == len(f["seq"]) and np.array_equal(c["seq"], f["seq"]) and np.array_equal(c["pos"], f["pos"]):
        return c, f
    kc = c["seq"].astype(np.int64) << 32 | c["pos"]
    kf = f["seq"].astype(np.int64) << 32 | f["pos"]
    _, ic, jf = np.intersect1d(kc, kf, return_indices=True)
    return {k: v[ic] for k, v in c.items()}, {k: v[jf] for k, v in f.items()}


def rms(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x * x))) if len(x) else math.nan


def stats(c: dict, f: dict) -> dict:
    kc, kf = c["kl"], f["kl"]
    return {
        "n": len(kc),
        "kl_mean": float(np.nanmean(kc)), "kl_p99": float(np.nanquantile(kc, 0.99)), "kl_max": float(np.nanmax(kc)),
        "f_kl_mean": float(np.nanmean(kf)), "f_kl_p99": float(np.nanquantile(kf, 0.99)),
        "f_kl_max": float(np.nanmax(kf)),
        "top1": float(np.mean(c["top1"])), "f_top1": float(np.mean(f["top1"])),
        "sigma_kl": math.sqrt(np.nanmean(kc) / np.nanmean(kf)) if np.nanmean(kf) > 0 else math.inf,
        "sigma_abs": rms(c["max_abs"]) / rms(f["max_abs"]) if rms(f["max_abs"]) > 0 else math.inf,
        "abs_rms": rms(c["max_abs"]), "f_abs_rms": rms(f["max_abs"]),
    }


def within_kl(c: dict, f: dict, r: float, eps: float) -> float:
    return float(np.mean(c["kl"] <= r * f["kl"] + eps))


def within_abs(c: dict, f: dict, r: float, eps: float) -> float:
    return float(np.mean(c["max_abs"] <= r * f["max_abs"] + eps))


def within_both(c: dict, f: dict, r: float, eps: float, eps_abs: float) -> float:
    return float(np.mean((c["kl"] <= r * f["kl"] + eps) & (c["max_abs"] <= r * f["max_abs"] + eps_abs)))


def g(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.2e}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.3g}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


class Tables:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        for line in lines:
            print(line)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        esc = lambda cells: " | ".join(c.replace("|", "\\|") for c in cells)  # noqa: E731 (|d| inside a cell)
        self.add("| " + esc(header) + " |", "|" + "---|" * len(header))
        for r in rows:
            self.add("| " + esc(r) + " |")
        self.add("")


def scopes(pos: dict, n_short: int, n_long: int) -> dict[str, dict]:
    """Named subsets: generated/prompt/both, over all, long or short prompts."""
    short = np.arange(n_short)
    long_ = np.arange(n_short, n_short + n_long)
    out = {}
    for suite, seqs in (("all", None), ("long", long_), ("short", short)):
        parts = {kind: select(pos[kind], seqs) for kind in KINDS}
        out[f"gen/{suite}"] = parts["generated"]
        out[f"prompt/{suite}"] = parts["prompt"]
        out[f"both/{suite}"] = join([parts["generated"], parts["prompt"]])
    return out


def analyse(index: dict, pos: dict, labels: list[str], args, tables: Tables) -> dict:
    floor_scopes = scopes(pos["floor"], args.short_prompts, args.long_prompts)
    names = [s for s in floor_scopes if not s.endswith("/short") or args.short_prompts]
    summary = {}
    tables.add(f"## max_model_len {args.max_model_len}: {args.short_prompts} short + {args.long_prompts} long "
               f"prompts ({args.max_model_len - args.max_tokens} tokens), {args.max_tokens} generated tokens", "")
    tables.add("### The floor (vLLM bf16 forced on the golden) against the golden", "")
    rows = []
    for s in names:
        f = floor_scopes[s]
        if not len(f["kl"]):
            continue
        rows.append([s, str(len(f["kl"])), g(float(np.mean(f["kl"]))), g(float(np.quantile(f["kl"], 0.99))),
                     g(float(np.max(f["kl"]))), pct(float(np.mean(f["top1"]))), g(rms(f["max_abs"])),
                     g(float(np.median(f["ref_conf"])))])
    tables.table(["scope", "n", "KL mean", "KL p99", "KL max", "top-1 %", "RMS max|d|", "golden conf median"], rows)

    for label in labels:
        faithful = CANDIDATES[label][4]
        cs = scopes(pos[label], args.short_prompts, args.long_prompts)
        tables.add(f"### {label} ({'faithful' if faithful else 'bug'})", "")
        rows, summary[label] = [], {}
        for s in names:
            c, f = aligned(cs[s], floor_scopes[s])
            if not len(c["kl"]):
                continue
            st = stats(c, f)
            grid = {(r, e, ea): within_both(c, f, r, e, ea) for r in RATIOS for e in KL_EPS for ea in ABS_EPS}
            kl_grid = {(r, e): within_kl(c, f, r, e) for r in RATIOS for e in KL_EPS}
            abs_grid = {(r, ea): within_abs(c, f, r, ea) for r in RATIOS for ea in ABS_EPS}
            summary[label][s] = {"stats": st, "both": grid, "kl": kl_grid, "abs": abs_grid}
            rows.append([s, str(st["n"]), f"{g(st['kl_mean'])} / {g(st['f_kl_mean'])}",
                         f"{g(st['kl_p99'])} / {g(st['f_kl_p99'])}", f"{g(st['kl_max'])} / {g(st['f_kl_max'])}",
                         f"{pct(st['top1'])} / {pct(st['f_top1'])}", g(st["sigma_kl"]), g(st["sigma_abs"]),
                         pct(kl_grid[(4.0, 1e-5)]), pct(abs_grid[(4.0, 5e-2)]), pct(grid[(4.0, 1e-5, 5e-2)])])
        tables.table(["scope", "n", "KL mean c / f", "KL p99 c / f", "KL max c / f", "top-1 % c / f", "sigma KL",
                      "sigma max|d|", "% KL<=4f+1e-5", "% d<=4f+.05", "% both"], rows)
        for s in ("gen/all", "prompt/all", "gen/long"):
            if s not in summary[label]:
                continue
            d = summary[label][s]
            tables.add(f"{label}, {s}: % of positions with KL_c <= R*KL_f + eps (rows R, columns eps), then "
                       f"max|d|_c <= R*max|d|_f + eps_abs", "")
            tables.table(["R", *[f"KL eps {e:g}" for e in KL_EPS], *[f"|d| eps {e:g}" for e in ABS_EPS]],
                         [[f"{r:g}", *[pct(d["kl"][(r, e)]) for e in KL_EPS],
                           *[pct(d["abs"][(r, e)]) for e in ABS_EPS]] for r in RATIOS])
        # KL by position bin (all prompts, both kinds).
        c, f = aligned(cs["both/all"], floor_scopes["both/all"])
        rows = []
        for a, b in BINS:
            m = (c["pos"] >= a) & (c["pos"] < (b if b is not None else 1 << 30))
            if m.any():
                kc, kf = float(np.mean(c["kl"][m])), float(np.mean(f["kl"][m]))
                rows.append([f"{a}-{b - 1 if b else ''}", str(int(m.sum())), g(kc), g(kf), g(kc / max(kf, 1e-30))])
        tables.add(f"{label}: KL mean by position (both kinds, all prompts)", "")
        tables.table(["positions", "n", "KL mean c", "KL mean floor", "ratio"], rows)
        summary[label]["bins"] = rows
    return summary


def flip_tables(index: dict, pos: dict, labels: list[str], tables: Tables, run_dir: Path) -> dict:
    tables.add("### Argmax flips against the golden", "",
               "gap: golden logprob of its top-1 minus of the candidate's argmax; rank: of the candidate's argmax "
               "in the golden row; steps: gap in bf16 rounding steps at the estimated top logit "
               "(top logprob minus the row's mean logprob).", "")
    all_flips, rows = {}, []
    for label in ["floor", *labels]:
        for kind in KINDS:
            fl = flips(index, label, kind, pos[label][kind])
            all_flips[f"{label}/{kind}"] = fl
            if not fl:
                rows.append([label, kind, "0", "", "", "", "", ""])
                continue
            gaps = np.array([x["gap"] for x in fl])
            steps = np.array([x["steps"] for x in fl])
            ranks = np.array([x["rank"] for x in fl])
            rows.append([label, kind, str(len(fl)), g(float(np.median(gaps))), g(float(gaps.max())),
                         f"{np.median(steps):.2g} / {steps.max():.3g}", str(int(ranks.max())),
                         " ".join(str(int(np.count_nonzero(steps <= t))) for t in (1, 2, 4, 8))])
    tables.table(["store", "kind", "flips", "gap median", "gap max", "steps median / max", "rank max",
                  "flips within 1/2/4/8 steps"], rows)
    (run_dir / "flips.json").write_text(json.dumps(all_flips, indent=1) + "\n")
    return all_flips


# (R, KL eps, |d| eps) rules whose per-candidate fractions are tabled side by side.
MATRIX_RULES = ((4.0, 1e-5, 5e-2), (4.0, 1e-4, 5e-2), (3.0, 1e-4, 5e-2), (4.0, 3e-4, 5e-2), (8.0, 1e-4, 5e-2),
                (4.0, 1e-4, None))
MATRIX_SCOPES = ("gen/all", "gen/long", "gen/short", "both/all", "both/long")


def discrimination(pos: dict, labels: list[str], args, tables: Tables) -> None:
    floor = scopes(pos["floor"], args.short_prompts, args.long_prompts)
    names = [s for s in MATRIX_SCOPES if len(floor[s]["kl"])]
    tables.add("### Per-position rule: % of positions within, every candidate", "",
               "within: KL_c <= R*KL_f + eps_kl and max|d|_c <= R*max|d|_f + eps_abs (|d| eps None: KL only). "
               "Then the sigma ratios (sqrt of the KL means' ratio / RMS ratio of max|d|).", "")
    for r, e, ea in MATRIX_RULES:
        rows = []
        for label in labels:
            cs = scopes(pos[label], args.short_prompts, args.long_prompts)
            row = [f"{label}{'' if CANDIDATES[label][4] else ' (bug)'}"]
            for sc in names:
                c, f = aligned(cs[sc], floor[sc])
                row.append(pct(within_kl(c, f, r, e) if ea is None else within_both(c, f, r, e, ea)))
            rows.append(row)
        tables.add(f"R {r:g}, KL eps {e:g}, |d| eps {ea}", "")
        tables.table(["candidate", *names], rows)
    rows = []
    for label in labels:
        cs = scopes(pos[label], args.short_prompts, args.long_prompts)
        row = [f"{label}{'' if CANDIDATES[label][4] else ' (bug)'}"]
        for sc in names:
            st = stats(*aligned(cs[sc], floor[sc]))
            row.append(f"{st['sigma_kl']:.2f} / {st['sigma_abs']:.2f}")
        rows.append(row)
    tables.add("sigma KL / sigma max|d|", "")
    tables.table(["candidate", *names], rows)


@dataclass(frozen=True)
class RuleSet:
    ratio: float
    kl_eps: float
    abs_eps: float
    min_fraction: float
    max_sigma_kl: float
    max_sigma_abs: float
    tie_steps: float
    flip_allowance: int  # real flips allowed beyond ratio x the floor's

    def failures(self, c: dict, f: dict, cand_flips: list, floor_flips: list) -> list[str]:
        out = []
        if not len(c["kl"]):
            return out
        frac = within_both(c, f, self.ratio, self.kl_eps, self.abs_eps)
        if frac < self.min_fraction:
            out.append(f"within {pct(frac)}%")
        st = stats(c, f)
        if st["sigma_kl"] > self.max_sigma_kl:
            out.append(f"sigma KL {st['sigma_kl']:.2f}")
        if st["sigma_abs"] > self.max_sigma_abs:
            out.append(f"sigma |d| {st['sigma_abs']:.2f}")
        real = lambda fl: sum(1 for x in fl if x["steps"] > self.tie_steps or x["rank"] > GARBAGE_RANK)  # noqa: E731
        rc, rf = real(cand_flips), real(floor_flips)
        if rc > self.ratio * rf + self.flip_allowance:
            out.append(f"{rc} real flips (floor {rf})")
        return out


RULESETS = {
    "A (4, 1e-5, .05, q .95, sigma 2/2, tie 2, +0): FloorRule's defaults when this was written":
        RuleSet(4.0, 1e-5, 0.05, 0.95, 2.0, 2.0, 2.0, 0),
    "B (4, 1e-4, .05, q .85, sigma 3/2, tie 4, +2)": RuleSet(4.0, 1e-4, 0.05, 0.85, 3.0, 2.0, 4.0, 2),
    "R (4, 1e-4, .05, q .80, sigma 3/2, tie 4, +2): recommended": RuleSet(4.0, 1e-4, 0.05, 0.80, 3.0, 2.0, 4.0, 2),
}


def verdicts(pos: dict, all_flips: dict, labels: list[str], args, tables: Tables) -> None:
    """Each rule set's verdict on every candidate: generated positions alone
    (the NPU path records no prompt logprobs), and generated + prompt gated
    kind by kind, over all prompts, the long ones and the short ones."""
    floor = {kind: pos["floor"][kind] for kind in KINDS}
    suites = [("all", None), ("long", np.arange(args.short_prompts, args.short_prompts + args.long_prompts))]
    if args.short_prompts:
        suites.append(("short", np.arange(args.short_prompts)))
    tables.add("### Verdicts under candidate default rule sets", "",
               "(R, KL eps, |d| eps, min fraction q, max sigma KL / |d|, tie steps, real flips allowed beyond "
               "R x the floor's). gen: generated positions only; gen+prompt: each kind gated separately. "
               "FAIL lists every reason.", "")
    for name, rs in RULESETS.items():
        header = ["candidate"]
        for suite, _ in suites:
            header += [f"gen/{suite}", f"gen+prompt/{suite}"]
        rows = []
        for label in labels:
            row = [f"{label}{'' if CANDIDATES[label][4] else ' (bug)'}"]
            for _suite, seqs in suites:
                fails = {}
                for kind in KINDS:
                    c, f = aligned(select(pos[label][kind], seqs), select(floor[kind], seqs))
                    cf = [x for x in all_flips[f"{label}/{kind}"] if seqs is None or x["seq"] in seqs]
                    ff = [x for x in all_flips[f"floor/{kind}"] if seqs is None or x["seq"] in seqs]
                    fails[kind] = rs.failures(c, f, cf, ff)
                gen = fails["generated"]
                both = [*gen, *[f"prompt {x}" for x in fails["prompt"]]]
                row += ["pass" if not gen else "FAIL: " + "; ".join(gen),
                        "pass" if not both else "FAIL: " + "; ".join(both)]
            rows.append(row)
        tables.add(f"Rule set {name}", "")
        tables.table(header, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/calib"))
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--long-prompts", type=int, default=2)
    ap.add_argument("--short-prompts", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model-seed", type=int, default=0, help="training seed of the model (and noise seed of the bugs)")
    ap.add_argument("--only", help="comma-separated candidate labels (default: all)")
    ap.add_argument("--fresh", action="store_true", help="record everything again")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PARITY_NO_PROGRESS", "1")
    out = args.out
    tag = (f"mml{args.max_model_len}-s{args.short_prompts}-l{args.long_prompts}-t{args.max_tokens}"
           + (f"-seed{args.model_seed}" if args.model_seed else ""))
    run_dir, stores = out / tag, out / "stores"
    run_dir.mkdir(parents=True, exist_ok=True)
    stores.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = build_models(out / "models", args.model_seed)
    only = set(args.only.split(",")) if args.only else None
    index = record_all(args, models, run_dir, stores, only)
    labels = [lb for lb in CANDIDATES if lb in index and (not only or lb in only)]
    t_rec = time.perf_counter() - t0
    pos = diff_all(index, labels)
    for label in ["floor", *labels]:
        np.savez(run_dir / f"{label}.npz", **{f"{kind}_{f}": pos[label][kind][f] for kind in KINDS for f in FIELDS})
    tables = Tables()
    summary = analyse(index, pos, labels, args, tables)
    all_flips = flip_tables(index, pos, labels, tables, run_dir)
    discrimination(pos, labels, args, tables)
    verdicts(pos, all_flips, labels, args, tables)
    (run_dir / "tables.md").write_text("\n".join(tables.lines) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(
        {lb: {s: {"stats": v["stats"],
                  "both": {f"{r:g}|{e:g}|{ea:g}": x for (r, e, ea), x in v["both"].items()},
                  "kl": {f"{r:g}|{e:g}": x for (r, e), x in v["kl"].items()},
                  "abs": {f"{r:g}|{e:g}": x for (r, e), x in v["abs"].items()}}
              for s, v in d.items() if s != "bins"}
         for lb, d in summary.items()}, indent=1) + "\n")
    _log(f"done in {time.perf_counter() - t0:.0f}s (recording {t_rec:.0f}s); tables in {run_dir / 'tables.md'}")


if __name__ == "__main__":
    main()
