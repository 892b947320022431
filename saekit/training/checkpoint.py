"""Training checkpoints: written atomically, verified by checksum, restored exactly.

Layout: `<checkpoint_dir>/checkpoints/step_<N>/` holding `trainer_state.pt` (every tensor and counter
of every sweep member, saved by us and read back with `weights_only=True`), `dictionaries/<name>/`
(each member exported in saekit format, ready to use), and `checkpoint.json` (step, tokens, configs,
and the state file's sha256). A step directory appears only once complete (atomic rename), and resume
takes the newest one whose checksum verifies.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from saekit.errors import SaekitError
from saekit.io import OWNER_MARK, atomic_directory, sha256_file

STATE_FILE = "trainer_state.pt"
META_FILE = "checkpoint.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoints_root(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / "checkpoints"


def write_checkpoint(checkpoint_dir: str | Path, step: int, state: dict[str, Any],
                     meta: dict[str, Any], exports: dict[str, Any], keep: int) -> Path:
    """Write one checkpoint atomically, then prune all but the newest `keep`."""
    from saekit.formats.detect import save  # local import: formats depend on the dictionary module

    root = checkpoints_root(checkpoint_dir)
    target = root / f"step_{step:09d}"
    for leftover in root.glob(".step_*") if root.is_dir() else []:  # of checkpoints killed mid-write
        killed = leftover.name.endswith(".tmp") or ".old-" in leftover.name
        if killed and leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
    with atomic_directory(target) as tmp:
        torch.save(state, tmp / STATE_FILE)
        for name, dictionary in exports.items():
            own_format = getattr(dictionary, "save_to", None)  # a module that is not a Dictionary
            if own_format is not None:
                own_format(tmp / "dictionaries" / name)
            else:
                save(dictionary, tmp / "dictionaries" / name)
        meta = dict(meta, step=step, sha256=sha256_file(tmp / STATE_FILE))
        meta["meta_sha256"] = meta_checksum(meta)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        if (old / OWNER_MARK).is_file():  # never a folder saekit did not write
            shutil.rmtree(old, ignore_errors=True)
    return target


def meta_checksum(meta: dict[str, Any]) -> str:
    """sha256 of checkpoint.json without its own checksum, canonical JSON: an edited step or token count
    (which would make a resume skip or repeat data) is detected rather than believed."""
    body = {key: value for key, value in meta.items() if key != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    root = checkpoints_root(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest_checkpoint(checkpoint_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(state, meta) of the newest checkpoint that verifies, or None when there is none.

    A corrupted newest checkpoint is reported rather than silently skipped: resuming from an older one
    would quietly redo work and could hide a disk problem.
    """
    checkpoints = list_checkpoints(checkpoint_dir)
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    meta_path, state_path = latest / META_FILE, latest / STATE_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SaekitError(f"checkpoint {latest} is unreadable ({first}); delete that directory to "
                          "resume from the previous checkpoint") from None
    if not isinstance(meta, dict) or meta.get("meta_sha256") != meta_checksum(meta):
        raise SaekitError(f"{meta_path} was modified after it was written (its checksum does not match); "
                          f"delete {latest} to resume from the previous checkpoint")
    if not state_path.is_file() or sha256_file(state_path) != meta.get("sha256"):
        raise SaekitError(f"checkpoint {state_path} fails its checksum (corrupted); delete {latest} "
                          "to resume from the previous checkpoint")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    return state, meta
