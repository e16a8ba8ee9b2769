"""Builds: CMake commands per backend, toolchain detection, cached builds."""
