"""Every error parity raises on purpose.

Each class also inherits the builtin it refines, so callers that catch
``FileNotFoundError`` or ``ValueError`` keep working. The CLI turns any
``ParityError`` into one line: the message, then the next step (``hint``).
"""

from __future__ import annotations


class ParityError(Exception):
    """Base class. ``hint`` names what the user can do next."""

    exit_code = 2
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        text = str(self).strip().replace("\n", " ")
        return f"{text} ({self.hint})" if self.hint else text


class UsageError(ParityError, ValueError):
    """The command line or the inputs it names are not usable."""


class StoreNotFoundError(ParityError, FileNotFoundError):
    hint = "check the path, or run `parity record` to create a store"


class NotAStoreError(ParityError, ValueError):
    hint = "pass the directory printed by `parity record`"


class SchemaVersionError(ParityError, ValueError):
    hint = "upgrade parity (`pip install -U parity`) to read this store"


class StoreCorruptError(ParityError, ValueError):
    hint = "the store is damaged: re-record it or pull it again"


class PartialStoreError(ParityError, ValueError):
    """A share of a sharded recording where a complete store is needed."""

    hint = "merge the shares into one store first: `parity merge SHARE... --out DIR`"


class IncompatibleStoresError(ParityError, ValueError):
    hint = "compare stores recorded from the same tokenizer and prompts (use `record --golden`)"


class ModelNotFoundError(ParityError, FileNotFoundError):
    hint = "pass a preset name (`parity presets`), a Hugging Face id, or a local model directory"


class PromptError(ParityError, ValueError):
    pass


class OutputNotWritableError(ParityError, PermissionError):
    hint = "choose another --out directory"


class DeviceUnavailableError(ParityError, ImportError):
    pass


class EngineError(ParityError, RuntimeError):
    hint = "rerun with PARITY_DEBUG=1 for the engine's traceback"


class GoldenMismatchError(ParityError, ValueError):
    hint = "record with the golden's model, tokenizer and prompts"


class HubError(ParityError, OSError):
    pass


class HubAuthError(HubError, PermissionError):
    hint = "set HF_TOKEN or run `hf auth login` with a token that can access the repo"


class GoldenNotFoundError(HubError, FileNotFoundError):
    hint = "check the reference, or list goldens with `parity ls --repo ORG/NAME`"
