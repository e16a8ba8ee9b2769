"""Models: the model catalogue, GGUF facts, tiny Gemma 4 + MTP pairs."""
