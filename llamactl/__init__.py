"""llamactl: vendor, patch, build, run and validate llama.cpp's llama-server."""

__version__ = "0.1.0"
