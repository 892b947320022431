"""Download the wheels a lent GPU machine lacks for the peer benchmarks, into .whl/ (run here, once).

That machine reaches no package index but has PyTorch and much of the field's stack (the names in
benchmarks/gpu_packages.txt, read from the device tool's KINDS.md). This walks the peers' requirements
(`Requires-Dist`, markers evaluated for CPython 3.12 on x86-64 Linux, extras skipped) and downloads with
`pip download --no-deps` every wheel not already there (building the sdist-only pure-Python ones), so
only what is missing travels (a run takes 64 MiB at most).

    .venv/bin/python benchmarks/gpu_wheels.py eai-sparsify==1.3.3 sae-lens==6.54.12
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any"]
TARGET = default_environment() | {"python_version": "3.12", "python_full_version": "3.12.3",
                                  "implementation_name": "cpython", "platform_system": "Linux",
                                  "sys_platform": "linux", "platform_machine": "x86_64"}


def present() -> set[str]:
    lines = (ROOT / "benchmarks/gpu_packages.txt").read_text().splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name) for name in names}


def download(requirement: str, out: Path) -> Path:
    before = set(out.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(out)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    if subprocess.run(command + [requirement], stderr=subprocess.DEVNULL, timeout=300).returncode != 0:
        # no wheel on the index (an sdist only): build one here; fine for the pure-Python ones that need it
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), requirement],
                       stderr=subprocess.DEVNULL, check=True, timeout=300)
    new = set(out.glob("*.whl")) - before
    name = canonicalize_name(Requirement(requirement).name)
    matching = [w for w in (new or set(out.glob("*.whl")))
                if canonicalize_name(w.name.split("-")[0]) == name]
    if not matching:
        raise SystemExit(f"pip downloaded no wheel for {requirement}")
    return matching[0]


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    found = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is None or requirement.marker.evaluate(TARGET | {"extra": ""}):
                found.append(requirement)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+")
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    there = present()
    queue = [Requirement(p) for p in args.packages]
    done: set[str] = set()
    while queue:
        requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in done or name in there:
            continue
        done.add(name)
        wheel = download(re.sub(r"\[.*?\]", "", str(requirement)), args.out)
        print(f"{wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB)")
        queue += requirements(wheel)
    total = sum(w.stat().st_size for w in args.out.glob("*.whl")) / 2**20
    print(f"{len(done)} wheels in {args.out}, {total:.1f} MiB (a lent-GPU run carries 64 MiB at most)")


if __name__ == "__main__":
    main()
