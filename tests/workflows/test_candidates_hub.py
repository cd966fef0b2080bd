"""`parity diff GOLDEN --candidates-from ORG/NAME`: a series of candidates kept on the Hub."""

from __future__ import annotations

import json

from parity.schemas import Store
from tests.support.cli_run import parity


def test_candidates_from_a_hub_repo_are_the_stores_of_the_references_request(hub, stores, tmp_path):
    golden = stores(prompt=(1, 2, 3), device="cpu", seed=0)
    npu = [stores(prompt=(1, 2, 3), device="rbln", seed=s, created_at=f"2026-0{s}-01T00:00:00+00:00")
           for s in (1, 2)]
    unrelated = stores(prompt=(7, 8, 9), device="rbln", seed=3)  # another request: not a candidate
    pushed = parity("push", str(golden), *map(str, npu), str(unrelated), "--repo", "org/series")
    assert pushed.returncode == 0, pushed.stderr

    out = tmp_path / "series.json"
    proc = parity("diff", str(golden), "--candidates-from", "org/series", "--json", str(out), "--no-color")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "parity.compare/1"
    # Oldest first, the reference itself and the other request left out.
    assert [c["candidate"]["digest"] for c in doc["candidates"]] == [Store.open(p).manifest.digest for p in npu]
    assert proc.stdout.strip().splitlines()[-1] == "2 candidates compared (no thresholds: report only)"

    alone = parity("diff", str(unrelated), "--candidates-from", "org/series")
    assert alone.returncode == 2 and "other than the reference" in alone.stderr
