"""The dataset card (README.md) of a goldens repo: what the repo is and every golden in it.

parity owns two parts of the card and rewrites them on every push: the
``parity`` key of the YAML metadata (every golden, machine-readable; what
``huggingface_hub.DatasetCard`` reads back) and the Markdown between
:data:`START` and :data:`END` (the table). Everything else — other metadata
keys, the title and prose around the block — is written once, when the card
is created, and is the repo owner's to edit from then on.
"""

from __future__ import annotations

import logging
import re

import yaml
from huggingface_hub import DatasetCard

from parity.units import human_bytes

from .catalog import GoldenEntry
from .refs import INDEX_FILE

log = logging.getLogger("parity")

CARD_FORMAT = "parity.goldens-card/1"
METADATA_KEY = "parity"
START = "<!-- parity:goldens:start -->"
END = "<!-- parity:goldens:end -->"
SHORT = 12  # hex digits of a digest shown in the table; `parity pull` takes any unique prefix of 6 or more
_BLOCK = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
_FRONT_MATTER = re.compile(r"^\s*---\r?\n.*?\r?\n---[ \t]*(?:\r?\n|$)", re.DOTALL)


def metadata_entry(e: GoldenEntry) -> dict:
    return {
        "digest": e.digest,
        "model": e.model,
        "weights_digest": e.weights_digest,
        "request_key": e.request_key,
        "num_hidden_layers": e.num_hidden_layers,  # null: the full model
        "device": e.device,
        "versions": dict(sorted(e.versions.items())),
        "prompts": e.prompts,
        "positions": e.positions,
        "prompt_positions": e.prompt_positions,
        "created_at": e.created_at,
        "size": e.size,
        "path": e.path,
    }


def render(repo: str, entries: list[GoldenEntry], existing: str | None = None) -> str:
    """The card for ``entries`` (newest first), keeping what the owner wrote in ``existing``."""
    card = _parse(existing) if existing is not None else None
    if card is None:
        card = DatasetCard(_scaffold(repo))
    card.data[METADATA_KEY] = {
        "format": CARD_FORMAT,
        "index": INDEX_FILE,
        "count": len(entries),
        "goldens": [metadata_entry(e) for e in entries],
    }
    block = _block(entries)
    if "\r\n" in card.text:  # a card edited on Windows keeps its line endings
        block = block.replace("\n", "\r\n")
    if _BLOCK.search(card.text):
        # A lambda, so backslashes in model names are not read as group references.
        card.text = _BLOCK.sub(lambda _: block, card.text, count=1)
    else:
        eol = "\r\n" if "\r\n" in card.text else "\n"
        card.text = card.text.rstrip("\r\n") + (eol * 2 if card.text.strip() else "") + block + eol
    return card.content


def _parse(text: str) -> DatasetCard | None:
    try:
        return DatasetCard(text)
    except (ValueError, yaml.YAMLError) as e:
        # The Hub refuses such a README, so it is rare (a file committed
        # without validation): keep its prose, start the metadata afresh.
        log.warning("the repo's README.md metadata is unreadable (%s); replacing its YAML block", str(e).splitlines()[0])
        m = _FRONT_MATTER.match(text)
        body = text[m.end():] if m else text
        card = DatasetCard("---\n\n---\n")
        card.text = body
        return card


def _scaffold(repo: str) -> str:
    meta = {"pretty_name": f"parity goldens: {repo}", "tags": ["parity", "logprobs", "golden"],
            # Zarr stores are nothing the dataset viewer can read.
            "viewer": False}
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# parity goldens: {repo}

This repository holds **goldens** recorded by parity, a golden-dataset
recorder and offline differ for LLM inference parity. A golden is a
content-addressed Zarr store with the full-vocabulary log-probabilities of
every prompt and generated position of a vLLM run on a trusted device (the
CPU), and the manifest that identifies it: model weights and tokenizer,
prompts, settings, device and versions. A run on another device (a Rebellions
NPU through vllm-rbln) follows a golden's token trajectory and is compared
with it position by position, offline.

## Using these goldens

```bash
# what is here (reads index.json only)
parity ls --repo {repo}

# record on the NPU, following the CPU golden of the same request, and compare
# (same model, prompts and settings as the golden: its request key must match)
parity record --device rbln --model MODEL --golden {repo} --diff

# goldens recorded at several depths: the first layer at which the NPU drifts
parity bisect --device rbln --model MODEL --golden {repo}

# one golden, by (a unique prefix of) its digest, into the Hugging Face cache
parity pull DIGEST --repo {repo}
```

`parity push STORE --repo {repo}` adds goldens; it rewrites `index.json`, the
`{METADATA_KEY}` metadata key and the table below in the same commit, and
leaves the rest of this card as you edit it.
"""


def _block(entries: list[GoldenEntry]) -> str:
    lines = [
        START,
        "<!-- Written by `parity push`: edits between these markers are replaced on the next push. -->",
        "",
        "## Goldens",
        "",
    ]
    if not entries:
        lines.append("No goldens yet.")
    else:
        noun = "golden" if len(entries) == 1 else "goldens"
        lines += [
            f"{len(entries)} {noun}, newest first. Machine-readable: [`{INDEX_FILE}`]({INDEX_FILE}), "
            f"and the `{METADATA_KEY}` key of this card's metadata.",
            "",
            "| golden | model | weights | request key | prompts | positions (generated + prompt) | layers "
            "| device | recorded | size |",
            "|---|---|---|---|---:|---:|---:|---|---|---:|",
        ]
        lines += [_row(e) for e in entries]
    lines.append(END)
    return "\n".join(lines)


def _row(e: GoldenEntry) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(e.versions.items()))
    cells = [
        _code(_short(e.digest)),
        _cell(e.model),
        _code(_short(e.weights_digest)) if e.weights_digest else "—",
        _code(_short(e.request_key)),
        str(e.prompts) if e.prompts else "?",
        f"{e.positions} + {e.prompt_positions}",
        "all" if e.num_hidden_layers is None else str(e.num_hidden_layers),
        _cell(f"{e.device} ({versions})" if versions else e.device),
        _cell(e.created_at[:16].replace("T", " ")),
        human_bytes(e.size),
    ]
    return "| " + " | ".join(cells) + " |"


def _short(digest: str) -> str:
    return digest.rpartition(":")[2][:SHORT]


def _code(text: str) -> str:
    return f"`{text.replace('`', '')}`"


def _cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
