"""Incremental rebuilds through the real builder, on a 3-file C project instead of llama.cpp.

The project's targets carry llama.cpp's names (llama-server, llama-gguf-split) so that builder
drives it exactly as it drives llama.cpp: vendor a path source, snapshot, configure, build, publish.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from llamactl.build.builder import BuildRequest, build

CMAKELISTS = """cmake_minimum_required(VERSION 3.16)
project(tiny C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)   # as llama.cpp does
add_library(util STATIC util.c)
add_executable(llama-server main.c)
target_link_libraries(llama-server util)
add_executable(llama-gguf-split split.c)
"""
MAIN_C = """#include <stdio.h>
#include <string.h>
const char *util_version(void);
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--help") == 0) { puts("usage: llama-server [options]"); return 0; }
    printf("version: %s\\n", util_version());
    return 0;
}
"""
UTIL_C = 'const char *util_version(void) { return "%s"; }\n'
SPLIT_C = "int main(void) { return 0; }\n"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A llamactl home whose lock names a 3-file C project; caches in tmp_path."""
    src = tmp_path / "tiny"
    src.mkdir()
    for name, text in {"CMakeLists.txt": CMAKELISTS, "main.c": MAIN_C, "util.c": UTIL_C % "one",
                       "split.c": SPLIT_C}.items():
        (src / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@x", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=src, check=True)
    subprocess.run([*git, "add", "-A"], cwd=src, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=src, check=True)   # a git checkout stays vendored
    home = tmp_path / "home"
    for d in ("vendor", "profiles", "patches"):
        (home / d).mkdir(parents=True)
    (home / "vendor" / "sources.yaml").write_text(yaml.safe_dump(
        {"default": "tiny", "sources": {"tiny": {"kind": "path", "path": str(src)}}}))
    monkeypatch.setenv("LLAMACTL_HOME", str(home))
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    return home / "vendor" / "llama.cpp"


def version(res) -> str:
    return subprocess.run([str(res.binary), "--version"], capture_output=True, text=True, check=True).stdout.strip()


def compiled(res) -> set[str]:
    """The C files this build compiled, read from ninja's progress lines in the build log."""
    log = Path(res.manifest["log"]).read_text()
    return set(re.findall(r"^\[\d+/\d+\] Building C object \S+?/([\w.]+)\.o$", log, re.M))


def test_one_file_edit_recompiles_only_that_file(project):
    first = build(BuildRequest(jobs=2))
    assert not first.cached and version(first) == "version: one"
    assert compiled(first) == {"util.c", "main.c", "split.c"}
    work_src = Path(first.manifest["work_dir"]) / "src"
    main_mtime = (work_src / "main.c").stat().st_mtime_ns

    (project / "util.c").write_text(UTIL_C % "two")     # an uncommitted edit in vendor/llama.cpp
    second = build(BuildRequest(jobs=2))
    assert not second.cached and second.manifest["key"] != first.manifest["key"]
    assert compiled(second) == {"util.c"}
    inc = second.manifest["incremental"]
    assert inc["files_written"] == 1 and inc["configured"] is False
    assert inc["ninja_steps"] == 3                      # util.c.o, libutil.a, llama-server
    assert (work_src / "main.c").stat().st_mtime_ns == main_mtime
    assert version(second) == "version: two"

    # each key names the build of exactly its inputs, even though both compiled in one work dir
    assert version(first) == "version: one"
    subprocess.run(["git", "checkout", "-q", "--", "util.c"], cwd=project, check=True)
    back = build(BuildRequest(jobs=2))
    assert back.cached and back.manifest["key"] == first.manifest["key"] and version(back) == "version: one"
    tree_id = subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=project, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert first.manifest["source_tree"] == tree_id != second.manifest["source_tree"]
    saved = json.loads((Path(second.manifest["build_root"]) / "manifest.json").read_text())
    assert saved["local_changes"] and saved["source_tree"] == second.manifest["source_tree"]


def test_changing_back_rebuilds_the_file_again(project):
    """Content that returns to an earlier state still gets a new mtime: ninja never keeps a stale object."""
    build(BuildRequest(jobs=2))
    (project / "util.c").write_text(UTIL_C % "two")
    build(BuildRequest(jobs=2))
    (project / "util.c").write_text(UTIL_C % "three")
    third = build(BuildRequest(jobs=2))
    assert compiled(third) == {"util.c"} and version(third) == "version: three"
