"""Waiting for a real `inspect eval` process and reading its log, for the Inspect tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from inspect_ai.log import EvalLog, list_eval_logs, read_eval_log


def finished_log(process: subprocess.Popen, folder: Path) -> EvalLog:
    """The one eval log an `inspect eval` run wrote under FOLDER/logs, once it succeeded."""
    process.wait(timeout=300)
    assert process.returncode == 0, (folder / "output.txt").read_text()[-3000:]
    (log_file,) = list_eval_logs(str(folder / "logs"))
    log = read_eval_log(log_file)
    assert log.status == "success", log.error
    return log
