"""Pretrained dictionaries from the Hugging Face Hub, by repository id.

Downloads go through `huggingface_hub.snapshot_download`, so they land in the usual cache
(`HF_HOME`, `HF_HUB_CACHE`), respect `HF_HUB_OFFLINE` and tokens, and are reused on the next call. With
a `subfolder` only that folder is fetched (`allow_patterns`), which matters for repositories holding one
dictionary per layer (sparsify, Gemma Scope). The downloaded folder is then read like a local one.
"""

from __future__ import annotations

import re
from pathlib import Path

from saekit.errors import SaekitError

try:  # a dependency of transformers; imported here so tests can replace it with a local stand-in
    from huggingface_hub import list_repo_files, snapshot_download
except ImportError:  # pragma: no cover - exercised only without huggingface_hub
    list_repo_files = snapshot_download = None  # type: ignore[assignment]

# Files that make a folder a dictionary, in any supported format.
DICTIONARY_FILES = ("cfg.json", "sae_weights.safetensors", "sae.safetensors", "ae.pt", "params.npz",
                    "params.safetensors")

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_repo_id(name: str) -> bool:
    """`org/name`, and not a local path: a local folder always wins, and when `org` is an existing local
    folder the name is a mistyped local path (reported as such, not sent to the Hub)."""
    if not _REPO_ID.match(name) or ".." in name or Path(name).exists():
        return False
    return not Path(name).parent.is_dir()


def download(repo_id: str, subfolder: str | None = None, revision: str | None = None) -> Path:
    """Local path of `repo_id` (or of its `subfolder`), downloading what is not cached yet."""
    if snapshot_download is None:
        raise SaekitError(f"loading {repo_id!r} from the Hugging Face Hub needs huggingface_hub: "
                          "pip install huggingface_hub")
    subfolder = subfolder.strip("/") if subfolder else None
    patterns = [f"{subfolder}/*"] if subfolder else _top_level_files(repo_id, revision)
    try:
        root = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns)
    except Exception as error:
        kind = type(error).__name__
        raise SaekitError(f"cannot download {repo_id!r} from the Hugging Face Hub ({kind}: "
                          f"{str(error).splitlines()[0][:200] if str(error) else kind}); check the "
                          "repository id, revision and network (or HF_HUB_OFFLINE), or pass a local "
                          "directory") from None
    path = Path(root) / subfolder if subfolder else Path(root)
    if not path.exists():
        raise SaekitError(f"{repo_id!r} has no folder {subfolder!r}: pass subfolder= one of the "
                          "repository's folders (e.g. 'layers.6')")
    return path


def _top_level_files(repo_id: str, revision: str | None) -> list[str] | None:
    """Without a subfolder, fetch only the repository's top-level files. Repositories of one dictionary
    per layer (Gemma Scope: hundreds of GB) are refused with their folders listed, instead of being
    downloaded whole. Offline, the listing fails and the cached snapshot decides (None: no filter)."""
    try:
        files = list(list_repo_files(repo_id, revision=revision))
    except Exception:
        return None
    top = [f for f in files if "/" not in f]
    if any(f in DICTIONARY_FILES for f in top):
        return top
    folders = sorted({f.rsplit("/", 1)[0] for f in files if f.rsplit("/", 1)[-1] in DICTIONARY_FILES})
    if not folders:
        raise SaekitError(f"{repo_id!r} holds no dictionary files ({', '.join(DICTIONARY_FILES)})")
    shown = ", ".join(folders[:6]) + (", ..." if len(folders) > 6 else "")
    raise SaekitError(f"{repo_id!r} holds {len(folders)} dictionaries in folders ({shown}): pass "
                      f"subfolder={folders[0]!r} (or --subfolder)")
