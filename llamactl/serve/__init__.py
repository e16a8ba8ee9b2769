"""Serving: profiles, the binary's flag dialect, argv rendering, launching llama-server."""
