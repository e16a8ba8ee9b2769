"""Two llamactl processes from one checkout, on different sources, at the same time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from llamactl.core import paths
from llamactl.source.vendor import cached_tree_path, provenance_path

LLAMACTL = [sys.executable, "-m", "llamactl"]

# A stand-in llama.cpp tree: the targets every build asks for, compiled in seconds.
CMAKE = """
cmake_minimum_required(VERSION 3.14)
project(tinyllama C)
add_executable(llama-server server.c)
add_executable(llama-gguf-split server.c)
set_target_properties(llama-server llama-gguf-split PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
"""
SERVER_C = r"""
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) { printf("version: 1 (%s)\n", TREE); return 0; }
    printf("usage: llama-server [options]\n  --port N\n");
    return 0;
}
"""


def tiny_tree(where: Path, name: str) -> Path:
    where.mkdir(parents=True)
    (where / "CMakeLists.txt").write_text(CMAKE.replace("project(tinyllama C)", f"project(tinyllama C)\nadd_compile_definitions(TREE=\"{name}\")"))
    (where / "server.c").write_text(SERVER_C)
    return where


def vendor_state(tree: Path) -> tuple[str, str, str]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True).stdout
    return provenance_path(tree).read_text(), head, dirty


def test_builds_on_different_sources_at_once_leave_vendor_tree_alone(built, clean_env, tmp_path):
    vendor = paths.vendor_tree()
    before = vendor_state(vendor)
    a = tiny_tree(tmp_path / "tree-a", "a")
    b = tiny_tree(tmp_path / "tree-b", "b")
    cmds = {
        "default": ["build", "--json"],
        "a1": ["build", "--source", f"path:{a}", "--json"],
        "a2": ["build", "--source", f"path:{a}", "--json"],   # same source and key: waits on the build lock
        "b": ["build", "--source", f"path:{b}", "--json"],
    }
    procs = {k: subprocess.Popen([*LLAMACTL, *v], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env)
             for k, v in cmds.items()}
    results = {}
    try:
        for k, p in procs.items():
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, f"{k}: {err}"
            results[k] = json.loads(out)
        trees = [cached_tree_path(f"path:{t}") for t in (a, b)]
        assert all((t / "CMakeLists.txt").is_file() for t in trees), "built from the cached per-source trees"
        for k, tree in (("a1", "a"), ("b", "b")):
            binary = results[k]["binaries"]["llama-server"]
            assert subprocess.run([binary, "--version"], capture_output=True, text=True).stdout == f"version: 1 ({tree})\n"
            assert results[k]["source"]["source"] == f"path:{tmp_path / ('tree-' + tree)}"
    finally:   # the stand-in builds and trees do not stay in the shared cache
        for k in ("a1", "a2", "b"):
            if k in results:
                shutil.rmtree(results[k]["build_root"], ignore_errors=True)
        for t in (a, b):
            shutil.rmtree(cached_tree_path(f"path:{t}").parent, ignore_errors=True)
    assert results["default"]["source"]["source"] == "upstream"
    assert results["a1"]["build_root"] == results["a2"]["build_root"] != results["b"]["build_root"]
    assert sorted([results["a1"]["cached"], results["a2"]["cached"]]) == [False, True], "one compiled, one waited"
    assert vendor_state(vendor) == before, "a build of another source changed vendor/llama.cpp"

