"""`saekit report`: one HTML page for a training run or sweep (curves, Pareto plot, table, links)."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.errors import SaekitError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="Write an HTML report of a training run or sweep.",
        description="Loss, MSE, L0 and dead-latent curves from the run's log.jsonl, the L0-vs-fidelity "
                    "Pareto plot across its dictionaries, the evaluation table (from `saekit eval "
                    "--out`) and links to dashboards, in one self-contained page.")
    parser.add_argument("run", type=Path, help="The run directory (`saekit train --out`).")
    parser.add_argument("--eval", type=Path, default=None, help="Evaluation JSON from `saekit eval --out`.")
    parser.add_argument("--dashboards", nargs="+", default=[], metavar="NAME=SITE",
                        help="Dashboard sites per dictionary (NAME=DIR); a bare DIR when the run has "
                             "one dictionary.")
    parser.add_argument("--out", type=Path, default=None, help="Page to write (default: RUN/report.html).")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saekit.inspect.report import find_log, read_log, write_run_report

    rows = []
    if args.eval is not None:
        from saekit.io import read_json_file

        rows = read_json_file(args.eval, "evaluation results")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SaekitError(f"{args.eval} must hold a list of objects (as `saekit eval --out` writes)")
    dashboards = {}
    for item in args.dashboards:
        name, sep, site = item.partition("=")
        if not sep:
            log = find_log(args.run) if args.run.is_dir() else None
            names = [r.get("name") for r in rows] or (list(read_log(log)) if log else [])
            if len(names) != 1:
                raise SaekitError(f"--dashboards {item}: name the dictionary (NAME=DIR); the run has "
                                  f"{len(names)} dictionaries")
            name, site = str(names[0]), item
        dashboards[name] = site
    out = write_run_report(args.run, rows, args.out or args.run / "report.html", dashboards)
    print(f"report -> {out}")
    return 0
