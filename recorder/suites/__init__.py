"""Prompt suites shipped with parity: named prompt lists, with long documents fitted to the context.

A suite is one JSON file in this package (``<name>.json``, format
``parity.prompt-suite/1``)::

    {"format": "parity.prompt-suite/1", "name": "default", "description": "...",
     "notice": "...",
     "prompts": [{"text": "Hello, my name is"},
                 {"file": "harbour-logbook.txt", "fit": "max_model_len"}]}

Each prompt is inline ``text`` or a UTF-8 ``file`` beside the suite. ``fit``
is null or ``"max_model_len"``: such a prompt is tokenized and cut, keeping
its beginning, to ``max_model_len - max_tokens`` tokens (``fit_ids``), so the
recording reaches the configured context length with its generated tokens
still fitting. Short prompts are used as they are. The texts were written for
parity and are under the project's license (Apache-2.0).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources

from parity.errors import PromptError

log = logging.getLogger("parity")

FORMAT = "parity.prompt-suite/1"
DEFAULT_SUITE = "default"
FIT_MAX_MODEL_LEN = "max_model_len"
FITS = (None, FIT_MAX_MODEL_LEN)


@dataclass(frozen=True)
class SuitePrompt:
    text: str
    fit: str | None = None  # FIT_MAX_MODEL_LEN: cut to max_model_len - max_tokens tokens


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    prompts: tuple[SuitePrompt, ...]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]


def suite_names() -> list[str]:
    """The shipped suites, sorted."""
    return sorted(f.name[:-5] for f in resources.files(__name__).iterdir() if f.name.endswith(".json"))


def load_suite(name: str) -> Suite:
    """The shipped suite ``name``; an unknown name is a one-line PromptError listing the known ones."""
    names = suite_names()
    if name not in names:
        raise PromptError(f"unknown prompt suite {name!r}: known suites are {', '.join(names)}")
    root = resources.files(__name__)
    spec = json.loads(root.joinpath(f"{name}.json").read_text(encoding="utf-8"))
    if spec.get("format") != FORMAT or spec.get("name") != name:
        raise PromptError(f"prompt suite {name!r} is not a {FORMAT} file named {name!r}")
    prompts = []
    for i, p in enumerate(spec["prompts"]):
        if p.get("fit") not in FITS or ("text" in p) == ("file" in p):
            raise PromptError(f"prompt suite {name!r}: prompt {i} needs one of text or file, and fit null "
                              f"or {FIT_MAX_MODEL_LEN!r}")
        text = p["text"] if "text" in p else root.joinpath(p["file"]).read_text(encoding="utf-8")
        prompts.append(SuitePrompt(text, p.get("fit")))
    return Suite(name, spec.get("description", ""), tuple(prompts))


def fit_budget(max_model_len: int, max_tokens: int) -> int:
    """Prompt tokens a fitted prompt gets: what leaves room for the generated tokens."""
    budget = max_model_len - max_tokens
    if budget < 1:
        raise PromptError(f"--max-tokens {max_tokens} leaves no room in --max-model-len {max_model_len} for the "
                          "suite's long prompts", hint="raise --max-model-len or lower --max-tokens")
    return budget


def fit_ids(ids: list[int], budget: int) -> list[int]:
    """The first ``budget`` token ids; a prompt shorter than that is used whole."""
    if len(ids) < budget:
        log.debug("a fitted prompt has %d tokens, fewer than its budget of %d: used whole", len(ids), budget)
    return ids[:budget]
