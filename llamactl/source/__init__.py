"""Sources: pinned llama.cpp sources, the vendored tree, patch series, git."""
