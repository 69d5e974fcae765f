#!/usr/bin/env bash
# Programs outside Python that the test suite drives, installed from Debian's packages or stopped on:
#   chromium   renders report.html headless (tests/integration/test_eval_*.py)
#   golang-go  Go's own text/template renders the Ollama Modelfile TEMPLATE (tests/unit/test_ollama_go.py)
# and checks that llama.cpp (the llama-cpp-cffi wheel, which `make install-dev` installs) has a build
# tunery finds: the second reader of every GGUF export in the export tests.
# A missing program is an error, never a silent skip. To skip the tests that need one on purpose, set
# TUNERY_SKIP_BROWSER=1, TUNERY_SKIP_GO=1 or TUNERY_SKIP_LLAMACPP=1: those tests then skip and say so
# in pytest's summary. PYTHON: the interpreter of the environment under test (default python3).
# Installing needs root (CI runs as root); about a minute for both on a fresh Debian machine.
set -euo pipefail

if [ "${TUNERY_SKIP_LLAMACPP:-}" != 1 ] && ! "${PYTHON:-python3}" -c \
    "import sys; from tunery.export.llamacpp import find_extension; sys.exit(find_extension() is None)"; then
  echo "error: no llama.cpp build found: pip install --no-deps llama-cpp-cffi==0.4.42" \
       "(or set TUNERY_SKIP_LLAMACPP=1 to skip the tests that need it)" >&2
  exit 1
fi

missing=()
if [ "${TUNERY_SKIP_BROWSER:-}" != 1 ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  missing+=(chromium)
fi
if [ "${TUNERY_SKIP_GO:-}" != 1 ] && ! command -v go >/dev/null; then
  missing+=(golang-go)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

how="install them (apt-get install -y ${missing[*]}) or set TUNERY_SKIP_BROWSER=1 / TUNERY_SKIP_GO=1 to skip their tests"
if [ "$(id -u)" != 0 ]; then
  echo "error: the tests need ${missing[*]}, and installing needs root: $how" >&2
  exit 1
fi
echo "installing ${missing[*]} (Debian packages) for the tests..."
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "error: apt-get could not install ${missing[*]}: $how" >&2
  exit 1
fi
