"""The command-line refusal every bad-input test checks."""

from __future__ import annotations

import pytest

from alignparadox.cli import main


def refused(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """Run `paradox ARGS`: it must exit 2 with one `error:` line on stderr and no traceback;
    returns that line."""
    with pytest.raises(SystemExit) as done:
        main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]
