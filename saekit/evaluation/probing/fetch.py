"""Fetch the sae-probes datasets without installing sae-probes: `python -m saekit.evaluation.probing.fetch
[WHEEL]` downloads the sae-probes wheel from PyPI with pip (or takes a wheel file), checks it is PyPI's
file and that every data file matches the wheel's RECORD, and unpacks only its `data/` folder into the
saekit cache, where `data.data_directory` finds it. scripts/setup.sh runs it."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from saekit.errors import SaekitError
from saekit.evaluation.probing.data import PACKAGE, VERSION, binary_datasets, cached_data_folder
from saekit.io import atomic_directory

WHEEL = f"sae_probes-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "245700c8df310760e3d5b23d657ae5196489813f3012b55975057d8239d8be03"  # PyPI's file


def unpack_wheel(wheel: str | Path, destination: str | Path | None = None) -> Path:
    """Unpack the `data/` folder of the sae-probes wheel into `destination` (default
    `cached_data_folder()`), atomically. The wheel must be PyPI's file (SHA-256) and every unpacked file
    must match the hash the wheel's RECORD gives it; names come only from RECORD entries under
    `sae_probes/data/`, each component a plain name, so nothing lands outside the folder."""
    wheel = Path(wheel)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SaekitError(f"{wheel} is not the sae-probes {VERSION} wheel from PyPI (SHA-256 {digest[:12]}…, "
                          f"expected {WHEEL_SHA256[:12]}…)")
    destination = Path(destination) if destination is not None else cached_data_folder()
    prefix = f"{PACKAGE}/data/"
    with zipfile.ZipFile(wheel) as archive:
        record = archive.read(f"sae_probes-{VERSION}.dist-info/RECORD").decode()
        with atomic_directory(destination) as tmp:
            for name, hash_field, _size in csv.reader(io.StringIO(record)):
                if not name.startswith(prefix):
                    continue
                parts = name[len(prefix):].split("/")
                if any(not p or p in (".", "..") or p.startswith(".") or "\\" in p for p in parts):
                    raise SaekitError(f"{wheel}: refusing the member name {name!r}")
                data = archive.read(name)
                algorithm, _, expected = hash_field.partition("=")
                actual = base64.urlsafe_b64encode(hashlib.new(algorithm, data).digest()).rstrip(b"=").decode()
                if actual != expected:
                    raise SaekitError(f"{wheel}: {name} does not match the wheel's RECORD")
                target = tmp.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    return destination


def download_wheel(folder: Path) -> Path:
    """`pip download --no-deps sae-probes==VERSION` into `folder`, through pip (the ordinary client)."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "--dest", str(folder), f"sae-probes=={VERSION}"]
    if subprocess.run(command, check=False).returncode != 0 or not (folder / WHEEL).is_file():
        raise SaekitError(f"could not download the sae-probes {VERSION} wheel with pip (no network?): "
                          f"download {WHEEL} elsewhere and run `python -m saekit.evaluation.probing.fetch WHEEL`")
    return folder / WHEEL


def main(argv: list[str] | None = None) -> int:
    """`python -m saekit.evaluation.probing.fetch [WHEEL]`: unpack the datasets into the saekit cache,
    from WHEEL or from a fresh download."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if args:
            folder = unpack_wheel(args[0])
        else:
            with tempfile.TemporaryDirectory() as tmp:
                folder = unpack_wheel(download_wheel(Path(tmp)))
    except SaekitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"sae-probes {VERSION} datasets in {folder} ({len(binary_datasets(folder))} binary datasets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
