"""Fault injection: every test here is marked `faults` (run them alone with `-m faults`)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def cli(capsys):
    """Run the CLI; return (exit code, stdout, the error lines of stderr)."""
    from saekit.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        errors = [line for line in err.splitlines() if line.startswith("saekit ")]
        return code, out, errors

    return run


def one_line_error(code, errors, *needles):
    """The promise: exit 2, exactly one `saekit <command>: error: ...` line, naming what went wrong."""
    assert code == 2, errors
    assert len(errors) == 1 and ": error: " in errors[0], errors
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
