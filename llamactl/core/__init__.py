"""Shared basics: paths, errors, hashing, subprocess helpers, console."""
