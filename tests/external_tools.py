"""Programs outside Python that some tests drive: headless Chromium (report.html), Go's text/template
(Ollama Modelfiles) and llama.cpp (a second GGUF reader).

`make test` installs them (scripts/test_tools.sh) and stops with an error when it cannot. A test that
finds one missing fails and says how to install it: a missing program never turns into a silent skip.
To skip such tests on purpose (a laptop without root, say), set the program's variable to 1; the test
then skips and the skip's reason, printed in pytest's summary, names the variable.
"""

from __future__ import annotations

import os
import shutil

import pytest

SKIP_VARIABLES = {"chromium": "TUNERY_SKIP_BROWSER", "go": "TUNERY_SKIP_GO", "llama.cpp": "TUNERY_SKIP_LLAMACPP"}
INSTALL = {
    "chromium": "apt-get install -y chromium",
    "go": "apt-get install -y golang-go",
    "llama.cpp": "pip install --no-deps llama-cpp-cffi==0.4.42",
}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def go() -> str | None:
    return shutil.which("go")


def llama_cpp() -> str | None:
    from tunery.export.llamacpp import reader_name

    return reader_name()  # 'llama-cpp-python 0.3.36' or 'llama-cpp-cffi 0.4.42', or None


def require(tool: str, found: str | None) -> str:
    """`found` (the program's path), or fail the test; skip only when the user asked to."""
    if found:
        return found
    variable = SKIP_VARIABLES[tool]
    if os.environ.get(variable) == "1":
        pytest.skip(f"{tool} is not installed and {variable}=1 asks to skip the tests that need it")
    pytest.fail(f"{tool} is not installed: {INSTALL[tool]} (`make test` installs it). "
                f"To skip the tests that need it on purpose, set {variable}=1.", pytrace=False)
