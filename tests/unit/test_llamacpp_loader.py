"""The llama.cpp reader loads only the installed distribution's own files, in a separate process, and
a reader that cannot load or dies is a status ("not verified by llama.cpp: ..."), never a crash."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

import pytest

from adapter_helpers import tiny_bpe_tokenizer
from conftest import make_tiny_model
from tunery.export import llamacpp
from tunery.export.verify import verify_with_llama_cpp

INSTALLED = llamacpp.find_extension() is not None
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def plant_package(root: Path, package: str, library: str) -> Path:
    """A folder earlier on sys.path with a package of that name and a library that is not one."""
    folder = root / package
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    fake = folder / library
    fake.write_bytes(b"not a shared library")
    return fake


def test_a_library_planted_earlier_on_sys_path_is_never_loaded(tmp_path, monkeypatch):
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    fake = plant_package(tmp_path, "llama", f"_llama_cpp_cpu{suffix}")
    fake_runtime = plant_package(tmp_path, "contourpy", f"_contourpy{suffix}")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = llamacpp.find_extension()
    assert found is None or (found != fake and tmp_path not in found.parents)
    assert all(tmp_path not in Path(p).parents for p in llamacpp.runtime_candidates())
    assert fake_runtime.exists()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from tunery.export.gguf_vocab import read_vocab
    from tunery.export.gguf_writer import write_gguf

    tok = tiny_bpe_tokenizer(TEMPLATE)
    model = make_tiny_model(len(tok)).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(model, read_vocab(tok, model.config.vocab_size, TEMPLATE), path, "f32")
    return path, model, tok


def check(path, model, tok):
    from tunery.export.probe import logits_of, probe_ids
    from tunery.export.verify import greedy_continuations

    rows = probe_ids(tok)
    return verify_with_llama_cpp(path, logits_of(model, rows), greedy_continuations(model, tok, 4), tok, "f32", 4)


@pytest.mark.skipif(not INSTALLED, reason="llama-cpp-cffi is not installed (make test installs it)")
def test_a_file_llama_cpp_cannot_load_is_reported_not_raised(tiny_gguf, tmp_path):
    _, model, tok = tiny_gguf
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    record = check(bad, model, tok)
    assert record["ran"] is False
    assert record["why"].startswith("not verified by llama.cpp: ") and "could not load" in record["why"]


@pytest.mark.skipif(not INSTALLED, reason="llama-cpp-cffi is not installed (make test installs it)")
def test_the_reader_runs_in_its_own_process(tiny_gguf, monkeypatch):
    path, model, tok = tiny_gguf
    record = check(path, model, tok)
    assert record["ran"] is True and record["passed"] is True, record
    maps = Path("/proc/self/maps").read_text()
    assert "_llama_cpp_cpu" not in maps  # nothing of llama.cpp (or what it needs preloaded) in this process
    monkeypatch.setenv("TUNERY_FAULT", "kill:llama-reader:1")  # the reader dies as a native crash would
    died = check(path, model, tok)
    assert died["ran"] is False and died["why"].startswith("not verified by llama.cpp: ")
    assert "signal 9" in died["why"]


@pytest.mark.parametrize("python, cffi, wanted, chosen", [
    (True, True, "", "llama-cpp-python"),  # the newer llama.cpp when both are installed
    (False, True, "", "llama-cpp-cffi"),  # CI: the prebuilt wheel only
    (True, True, "llama-cpp-cffi", "llama-cpp-cffi"),  # asked for by name
    (False, True, "llama-cpp-python", None),  # asked for one that is not installed: none, not the other
    (False, False, "", None),
])
def test_the_reader_prefers_llama_cpp_python_when_installed(python, cffi, wanted, chosen, monkeypatch, tmp_path):
    from tunery.export import llamacpp_bindings

    monkeypatch.setattr(llamacpp_bindings, "python_binding_module", lambda: tmp_path if python else None)
    monkeypatch.setenv("TUNERY_LLAMA_CPP_READER", wanted)
    assert llamacpp_bindings.chosen_reader(cffi) == chosen
    monkeypatch.setattr(llamacpp, "find_extension", lambda: Path("x.so") if cffi else None)
    named = llamacpp.reader_name()
    assert (named is None) if chosen is None else named.startswith(chosen + " ")


def test_llama_cpp_python_is_loaded_from_its_distribution_files_only(tmp_path, monkeypatch):
    """A `llama_cpp` package earlier on sys.path is not what the reader loads."""
    from tunery.export import llamacpp_bindings

    planted = tmp_path / "llama_cpp"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise RuntimeError('planted package imported')")
    (planted / "llama_cpp.py").write_text("raise RuntimeError('planted module imported')")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = llamacpp_bindings.python_binding_module()
    assert found is None or tmp_path not in found.parents
