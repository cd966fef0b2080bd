"""`--model ORG/NAME`: a Hub model fetched into the Hugging Face cache on first use, pinned to a commit.

Only what vLLM loads is fetched (``select_files``): top-level config,
generation config, tokenizer files, chat templates, remote code (``*.py``,
``*.tiktoken``) and the weights in one format: the safetensors (only the
shards the index names, when there is one), or, when a repo has no
safetensors, the ``.bin`` files. ``original/`` and other subfolders,
``.pt``/``.pth``, GGUF, Flax, TF and ONNX weights are never fetched.

A model is handed to the recorder only when every file the selection names
is in the snapshot at the size the Hub's listing gives (``missing_files``):
an interrupted download leaves a snapshot without some weights (the client
resumes a dropped transfer a few times within a run, then deletes its
partial file), which the next run completes and HF_HUB_OFFLINE=1 refuses by
name. The weights digest is taken over the
selected weight files only, so a snapshot that also holds files another tool
fetched (``.bin`` duplicates, say) digests the same.

HF_ENDPOINT, HF_TOKEN (or ``hf auth login``) and HF_HUB_CACHE are
huggingface_hub's own; HF_HUB_OFFLINE is also read through parity's settings,
so it applies when set after the client was imported.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from huggingface_hub import HfApi, get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import tqdm as hf_tqdm

from parity.hub import Hub, translate_model_error
from parity.errors import HubError, ModelNotFoundError, ParityError
from parity.units import human_bytes
from parity.settings import settings

from .model_files import TOKENIZER_FILES

log = logging.getLogger("parity")

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Fetched before the listing is read: the files every text model needs, and
# the safetensors index that says which shards to fetch.
FIRST_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES, SAFETENSORS_INDEX)
# .bin files in a repo's top level that are not weights (vLLM skips them too).
NOT_WEIGHTS = ("training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin", "rng_state.bin")


@dataclass(frozen=True)
class HubModel:
    path: Path  # the snapshot directory of the commit
    commit: str
    weight_files: tuple[str, ...]  # relative to path
    missing: tuple[str, ...] = ()  # weights not fetched (a dry-run's plan)


class _NoBars(hf_tqdm):
    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def select_files(names, read_index: Callable[[str], dict]) -> tuple[list[str], list[str]]:
    """The files vLLM needs out of a repo listing: (every file, the weight files among them).

    ``read_index(name)`` returns a parsed ``*.index.json`` of the repo.
    """
    top = {n for n in names if "/" not in n}
    needed = {n for n in top if n in FIRST_FILES or n.startswith("chat_template") or n.endswith((".py", ".tiktoken"))}
    needed.discard(SAFETENSORS_INDEX)
    safetensors = {n for n in top if n.endswith(".safetensors")}
    if safetensors:
        index = SAFETENSORS_INDEX
        weights = safetensors
    else:
        index = BIN_INDEX
        weights = {n for n in top if n.endswith(".bin") and n not in NOT_WEIGHTS}
    if index in top:
        # Some repos keep a consolidated file beside the shards: the index says which set vLLM loads.
        needed.add(index)
        weight_map = read_index(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelNotFoundError(f"{index} has no weight_map", hint="the repository's index file is damaged")
        weights = set(weight_map.values())
    return sorted(needed | weights), sorted(weights)


def missing_files(snapshot: Path, expected: dict[str, int | None]) -> list[str]:
    """Expected files absent from the snapshot or of another size (a broken symlink counts as absent)."""
    out = []
    for name, size in sorted(expected.items()):
        try:
            actual = (snapshot / name).stat().st_size
        except OSError:
            actual = None
        if actual is None or (size is not None and actual != size):
            out.append(name)
    return out


def fetch(repo: str, revision: str | None = None, *, weights: bool = True, endpoint: str | None = None,
          cache_dir: Path | str | None = None, token: str | bool | None = None) -> HubModel:
    """The snapshot of ``repo`` at ``revision`` with every file vLLM needs (``weights=False``: all but the weights).

    Downloads what is missing unless HF_HUB_OFFLINE is set; raises parity
    errors only.
    """
    hub = Hub.resolve(token=token, endpoint=endpoint, cache_dir=cache_dir)
    endpoint, cache, offline = hub.endpoint, hub.cache_dir, hub.offline
    try:
        return _fetch(repo, revision, weights=weights, endpoint=endpoint, cache=cache, token=token, offline=offline)
    except ParityError:
        raise
    except Exception as exc:  # noqa: BLE001 - every client error becomes one line
        raise translate_model_error(exc, repo=repo, revision=revision, endpoint=endpoint, cache=cache, offline=offline) from None


def _fetch(repo, revision, *, weights, endpoint, cache, token, offline) -> HubModel:
    api = HfApi(endpoint=endpoint, token=token)
    # Resolved once: every file comes from this commit even if the branch moves meanwhile.
    resolved = api.resolve_revision(repo, revision=revision, cache_dir=cache, local_files_only=offline)
    commit = resolved.resolved
    snapshot = cache / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / commit
    label = f"{repo}@{commit[:12]}"
    # The client's own bars, for the files worth one; like the CLI's, only on a terminal.
    show_bars = not settings().no_progress and sys.stderr.isatty()

    def download(names, *, force: bool = False, bars: bool = True) -> None:
        if offline or not names:
            return
        # Exact names: allow_patterns are fnmatch patterns.
        snapshot_download(repo, revision=resolved, cache_dir=cache, endpoint=endpoint, token=token,
                          allow_patterns=[re.sub(r"([*?\[])", r"[\1]", n) for n in names],
                          tqdm_class=None if bars and show_bars else _NoBars, force_download=force)

    listing = _cached_listing(repo, commit, cache)
    if listing is None and not offline:
        log.info("fetching the file list, config and tokenizer of %s from %s", label, endpoint)
        download(FIRST_FILES, bars=False)  # also lists the commit's files into the cache, in one call
        listing = _cached_listing(repo, commit, cache)
        if listing is None:  # the client did not cache the listing (it could not write it)
            listing = {f.path: f.size for f in api.list_repo_tree(repo, revision=commit, recursive=True)
                       if getattr(f, "size", None) is not None}
    if listing is None:
        if not snapshot.is_dir():
            raise LocalEntryNotFoundError(f"no snapshot of {label}")
        # A snapshot made without the listing (an older client, `hf download`):
        # what is on disk is all there is to judge by, without sizes.
        listing = {p.name: None for p in snapshot.iterdir()}

    def read_index(name: str) -> dict:
        if not (snapshot / name).exists():
            download([name], bars=False)
        try:
            return json.loads((snapshot / name).read_text())
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {label}: {name} is not in the local Hugging Face cache",
                                     hint="unset HF_HUB_OFFLINE and run again to download it") from None
        except ValueError:
            raise ModelNotFoundError(f"model {label}: {name} is not valid JSON") from None

    if "config.json" not in listing:
        raise ModelNotFoundError(f"model {label} has no config.json: not a model vLLM can load")
    files, weight_files = select_files(listing, read_index)
    if not weight_files:
        raise ModelNotFoundError(f"model {label} has no safetensors or .bin weights vLLM can load",
                                 hint="parity does not fetch .pt, GGUF, ONNX, TF or Flax weights")
    wanted = files if weights else [f for f in files if f not in weight_files]
    expected = {f: listing.get(f) for f in wanted}
    missing = missing_files(snapshot, expected)
    downloaded = bool(missing) and not offline
    if downloaded:
        size = sum(listing.get(f) or 0 for f in missing)
        log.info("downloading %s from %s: %d file(s), %s", label, endpoint, len(missing), human_bytes(size))
        absent = [f for f in missing if not (snapshot / f).exists()]
        download(absent)
        # A cached file of the wrong size is a damaged blob: the client would keep it.
        download([f for f in missing if f not in absent], force=True)
        missing = missing_files(snapshot, expected)
        if missing:
            raise HubError(f"download of model {label} is incomplete: {_sample(missing)}",
                           hint="run the same command again to download what is missing")
        log.info("downloaded %s to %s", label, snapshot)
    if missing:
        raise ModelNotFoundError(
            f"model {label} is incomplete in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"missing {_sample(missing)}",
            hint="unset HF_HUB_OFFLINE and run again to finish the download",
        )
    unfetched = () if weights else tuple(missing_files(snapshot, {f: listing.get(f) for f in weight_files}))
    if not unfetched and not downloaded:
        log.info("using %s from the Hugging Face cache%s", label, " (HF_HUB_OFFLINE)" if offline else "")
    return HubModel(snapshot, commit, tuple(weight_files), unfetched)


def _cached_listing(repo: str, commit: str, cache: Path) -> dict[str, int | None] | None:
    try:
        return {f.path: f.size for f in get_cached_repo_tree(repo, revision=commit, cache_dir=cache)}
    except CachedRepoTreeNotFoundError:
        return None


def _sample(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
