"""`saekit <command>`: a thin layer that parses arguments, calls the library, and prints clear errors.

Each command lives in a module of `saekit.commands` with `register(subparsers)`, which adds its parser
and sets `func=run` via `set_defaults`; modules are discovered, so adding a command touches no shared
list. Errors a user can fix (`SaekitError`, bad files, bad values) are printed as one line on stderr with
exit code 2; no traceback reaches the user unless SAEKIT_DEBUG=1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from saekit.errors import SaekitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saekit",
        description="Sparse dictionary learning on neural network internals.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    import saekit.commands

    for info in sorted(pkgutil.iter_modules(saekit.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"saekit.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def one_line(text: str) -> str:
    """Errors print as one line, whatever a message from a library holds."""
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        if getattr(args, "device", None) is not None:  # one line here, not a CUDA traceback later
            from saekit.training.distributed import check_device

            check_device(args.device, "--device")
        result = args.func(args)
    except SaekitError as error:
        print(f"saekit {args.command}: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:  # missing files, permissions, a full disk: the user's to fix
        where = f" ({error.filename})" if error.filename else ""
        print(f"saekit {args.command}: error: {one_line(error.strerror or str(error))}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saekit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("SAEKIT_DEBUG"):
            raise
        print(
            f"saekit {args.command}: internal error: {type(error).__name__}: {one_line(str(error))} "
            "(set SAEKIT_DEBUG=1 for a traceback and please report it)",
            file=sys.stderr,
        )
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
