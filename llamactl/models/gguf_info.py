"""What a GGUF file is, read with the ``gguf`` package (no llama.cpp needed)."""

from __future__ import annotations

from pathlib import Path

from llamactl.core.errors import LlamactlError


def info(path: Path) -> dict:
    """Architecture, sizes and tokenizer facts from the GGUF header."""
    import gguf  # heavy import: only when asked

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise LlamactlError(f"{path} is not a readable GGUF file: {exc}") from exc

    def field(name: str):
        f = reader.get_field(name)
        if f is None:
            return None
        try:
            return f.contents()
        except (ValueError, IndexError):
            return None

    arch = field("general.architecture")
    keys = {k: field(f"{arch}.{k}") for k in ("context_length", "embedding_length", "block_count",
                                               "attention.head_count", "attention.head_count_kv",
                                               "attention.key_length", "attention.sliding_window")}
    tokens = reader.get_field("tokenizer.ggml.tokens")
    return {
        "path": str(path),
        "size_mb": round(path.stat().st_size / 2**20, 2),
        "architecture": arch,
        "name": field("general.name"),
        "file_type": field("general.file_type"),
        **{k.replace("attention.", ""): v for k, v in keys.items() if v is not None},
        "tensors": len(reader.tensors),
        "parameters": int(sum(int(t.n_elements) for t in reader.tensors)),
        "vocab_size": len(tokens.data) if tokens is not None else None,
        "tokenizer": field("tokenizer.ggml.model"),
        "chat_template": field("tokenizer.chat_template") is not None,
    }
