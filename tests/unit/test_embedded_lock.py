"""First use of a converted model by two processes at once: one converts, the other waits and reuses it."""

from __future__ import annotations

import subprocess
import sys
import time

from adapter_helpers import tiny_bpe_tokenizer
from conftest import make_tiny_model
from tunery.models import embedded

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def test_a_second_converter_waits_for_the_lock_and_reuses_the_result(tmp_path):
    from tunery.export.gguf_vocab import read_vocab
    from tunery.export.gguf_writer import write_gguf

    tok = tiny_bpe_tokenizer(TEMPLATE)
    model = make_tiny_model(len(tok))
    gguf = tmp_path / "tiny.gguf"
    write_gguf(model, read_vocab(tok, model.config.vocab_size, TEMPLATE), gguf, "f32")
    target = tmp_path / "cache" / "models" / "tiny"
    code = ("import sys; from pathlib import Path; from tunery.models.embedded import convert_gguf; "
            "convert_gguf(Path(sys.argv[1]), Path(sys.argv[2])); print('returned')")
    with embedded.conversion_lock(target):
        other = subprocess.Popen([sys.executable, "-c", code, str(gguf), str(target)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(8)  # long enough for an unlocked conversion of this tiny model to finish
        assert other.poll() is None, other.stdout.read()  # it waits
        target.mkdir(parents=True)  # this process "converts" meanwhile
        (target / embedded.READY_MARKER).write_text("converted by the first process\n")
    out, _ = other.communicate(timeout=120)
    assert other.returncode == 0 and "returned" in out, out
    assert (target / embedded.READY_MARKER).read_text() == "converted by the first process\n"  # not redone
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == ["tiny"]
