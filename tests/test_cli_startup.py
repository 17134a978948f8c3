"""`paradox --help` and usage errors stay fast: the command line imports no heavy library."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "sklearn", "scipy", "matplotlib")


def test_importing_the_command_line_imports_no_heavy_library():
    # A fresh interpreter: this test process may already have imported them.
    script = ("import sys\n"
              "import alignparadox.cli\n"
              f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == ""
