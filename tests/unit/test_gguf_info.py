import pytest

from llamactl.models import tiny_gemma4
from llamactl.core.errors import LlamactlError
from llamactl.models.gguf_info import info


def test_info_reads_a_tiny_pair(tmp_path):
    pair = tiny_gemma4.write_pair(tiny_gemma4.TinySpec(layout="upstream", drafter="echo"), tmp_path)
    t = info(pair.target)
    assert t["architecture"] == "gemma4" and t["block_count"] == 4 and t["embedding_length"] == 128
    assert t["vocab_size"] == 340 and t["chat_template"] is True and t["parameters"] > 0
    d = info(pair.drafter)
    assert d["architecture"] == "gemma4-assistant" and d["embedding_length"] == 64


def test_info_refuses_non_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"not a gguf file at all")
    with pytest.raises(LlamactlError, match="not a readable GGUF"):
        info(p)
