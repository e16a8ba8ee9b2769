"""Sources at any version: upstream@VERSION recorded on first fetch and checked after, NAME@COMMIT, ordering."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from llamactl.build.builder import BuildRequest, build_key, key_material, work_dir_for
from llamactl.core import pipdl
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.source import sources, vendor

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "4df29be4f4c3673f428170fda944a5b19f743bb8"


def sdist(version: str, body: str = "int main() {}\n", commit: str | None = COMMIT) -> bytes:
    """A tiny llama-cpp-python sdist: the vendored tree and the submodule's git metadata."""
    buf = io.BytesIO()
    top = f"llama_cpp_python-{version}"
    files = {f"{top}/vendor/llama.cpp/tools/server/server.cpp": body, f"{top}/README.md": "x\n",
             f"{top}/vendor/llama.cpp/.git": "gitdir: ../../.git/modules/vendor/llama.cpp\n"}
    if commit:
        files[f"{top}/.git/modules/vendor/llama.cpp/HEAD"] = commit + "\n"
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Index:
    """A PEP 691 index serving llama-cpp-python sdists from a dict version -> bytes (mutable: tamper with it)."""

    def __init__(self, served: dict[str, bytes]) -> None:
        self.served = served
        self.bodies: dict[str, bytes] = {}   # bytes served instead of what the listing's hash names (a bad mirror)
        self.downloads = 0

    def handler(self, req: httpx.Request) -> httpx.Response:
        if req.url.path == "/simple/llama-cpp-python/":
            files = [{"filename": f"llama_cpp_python-{v}.tar.gz", "url": f"../../files/{v}.tar.gz",
                      "hashes": {"sha256": hashlib.sha256(b).hexdigest()}} for v, b in self.served.items()]
            files.append({"filename": "llama_cpp_python-0.3.20-cp311-manylinux.whl", "url": "x", "hashes": {"sha256": "0" * 64}})
            return httpx.Response(200, json={"files": files}, headers={"content-type": pipdl.PEP691})
        if req.url.path.startswith("/files/"):
            self.downloads += 1
            v = req.url.path[7:-7]
            return httpx.Response(200, content=self.bodies.get(v, self.served[v]))
        return httpx.Response(404)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A checkout with the real vendor/sources.yaml and an empty version record; a private cache; a fake index."""
    home = tmp_path / "home"
    (home / "vendor").mkdir(parents=True)
    shutil.copy(ROOT / "vendor" / "sources.yaml", home / "vendor" / "sources.yaml")
    shutil.copytree(ROOT / "patches", home / "patches")
    (home / "profiles").mkdir()
    monkeypatch.setenv("LLAMACTL_HOME", str(home))
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "https://index.test/simple/")
    monkeypatch.setenv("LLAMACTL_NO_PROGRESS", "1")
    index = Index({"0.3.9": sdist("0.3.9"), "0.3.10": sdist("0.3.10"), "0.3.35": sdist("0.3.35", "int main() { return 1; }\n")})
    real, mock = httpx.Client, httpx.MockTransport(index.handler)
    monkeypatch.setattr(httpx, "Client", lambda *a, transport=None, **k: real(*a, transport=mock, **k))

    def no_pip(*a, **k):
        raise AssertionError("fell back to pip")
    monkeypatch.setattr(pipdl, "_pip", no_pip)
    monkeypatch.setattr(pipdl, "download_unpinned", no_pip)
    return home, index


def test_first_fetch_records_sha256_and_commit_then_later_fetches_use_the_record(project, tmp_path):
    home, index = project
    name, spec = sources.resolve("upstream@0.3.35")
    assert name == "upstream@0.3.35"
    assert isinstance(spec, sources.PypiSdistSource)
    assert spec.version == "0.3.35" and spec.sha256 == hashlib.sha256(index.served["0.3.35"]).hexdigest()
    assert spec.commit == COMMIT and spec.series == "upstream"
    text = (home / "vendor" / "upstream-versions.yaml").read_text()
    assert "0.3.35" in text and spec.sha256 in text and COMMIT in text
    assert sources.locked_version("llama-cpp-python", "0.3.35") is not None
    assert sources.resolve("upstream@0.3.35") == (name, spec) and index.downloads == 1   # no second download
    prov = vendor.vendor("upstream@0.3.35", tree=tmp_path / "t" / "llama.cpp")
    assert prov.source == "upstream@0.3.35" and prov.upstream_commit == COMMIT and prov.hash == spec.sha256
    assert "return 1" in (tmp_path / "t" / "llama.cpp" / "tools" / "server" / "server.cpp").read_text()


def test_a_later_fetch_that_does_not_match_the_record_is_an_error(project, tmp_path):
    home, index = project
    sources.resolve("upstream@0.3.35")
    shutil.rmtree(tmp_path / "cache" / "downloads")              # not cached: fetch again
    index.bodies["0.3.35"] = sdist("0.3.35", "tampered\n")       # the index now serves other bytes
    with pytest.raises(LlamactlError, match="sha256 mismatch"):
        vendor.vendor("upstream@0.3.35", tree=tmp_path / "t" / "llama.cpp")
    assert not (tmp_path / "t" / "llama.cpp").exists()


def test_a_version_without_an_sdist_is_one_line_naming_the_newest(project):
    with pytest.raises(LlamactlError, match=r"llama-cpp-python 0.3.20 has no sdist") as exc:
        sources.resolve("upstream@0.3.20")
    assert "0.3.35" in str(exc.value)
    with pytest.raises(LlamactlError, match="not recorded"):
        sources.resolve("upstream@0.3.9", fetch=False)
    with pytest.raises(BadInput, match="not a version"):
        sources.resolve("upstream@latest")


def test_the_pinned_version_is_the_plain_name(project):
    name, spec = sources.resolve("upstream@0.3.36")
    assert name == "upstream" and spec == sources.load_lock().sources["upstream"]
    assert sources.canonical("upstream@0.3.36") == "upstream" and sources.canonical("upstream@0.3.35") == "upstream@0.3.35"


def test_versions_are_listed_in_version_order(project):
    assert sources.available_versions() == ["0.3.9", "0.3.10", "0.3.35"]   # 0.3.20 is a wheel only
    assert sources.versions_between("upstream", "0.3.35", "0.3.10") == ["0.3.10", "0.3.35"]
    with pytest.raises(BadInput, match="no such version"):
        sources.versions_between("upstream", "0.3.1", "0.3.35")
    with pytest.raises(BadInput, match="not a pypi-sdist source"):
        sources.available_versions("atomic-turboquant")


def test_git_source_at_a_commit(project):
    rev = "1" * 40
    name, spec = sources.resolve(f"atomic-turboquant@{rev}")
    assert isinstance(spec, sources.GitSource) and spec.commit == rev and name == f"atomic-turboquant@{rev}"
    pinned = sources.load_lock().sources["atomic-turboquant"]
    assert isinstance(pinned, sources.GitSource)
    assert sources.resolve(f"atomic-turboquant@{pinned.commit}")[0] == "atomic-turboquant"
    with pytest.raises(BadInput, match="full 40-hex commit"):
        sources.resolve("atomic-turboquant@0a635dcd9")


def test_sdist_commit_is_none_without_git_metadata(tmp_path):
    f = tmp_path / "s.tar.gz"
    f.write_bytes(sdist("0.1", commit=None))
    assert sources.sdist_commit(f, "vendor/llama.cpp") is None
    f.write_bytes(sdist("0.1"))
    assert sources.sdist_commit(f, "vendor/llama.cpp") == COMMIT


def test_a_version_is_part_of_the_build_key_and_versions_share_one_work_dir():
    compilers = {"cc": "cc 12"}
    idents = [{"source": "upstream", "kind": "pypi-sdist", "version": "0.3.36", "hash": "a"},
              {"source": "upstream@0.3.35", "kind": "pypi-sdist", "version": "0.3.35", "hash": "b"},
              {"source": "upstream@0.3.34", "kind": "pypi-sdist", "version": "0.3.34", "hash": "c"}]
    mats = [key_material(BuildRequest(), i, [], None, compilers) for i in idents]
    assert len({build_key(m) for m in mats}) == 3
    assert work_dir_for("cpu", mats[1]) == work_dir_for("cpu", mats[2])   # incremental between versions (bisect)
    assert work_dir_for("cpu", mats[0]) != work_dir_for("cpu", mats[1])   # the pinned source's work dir keeps its state
    fork = key_material(BuildRequest(), dict(idents[0], source="atomic-turboquant@" + "1" * 40), [], None, compilers)
    assert work_dir_for("cpu", fork) != work_dir_for("cpu", mats[1])
    paths_ = [key_material(BuildRequest(), dict(idents[0], source=f"path:/src/llama.cpp@{r}"), [], None, compilers) for r in ("a", "b")]
    assert work_dir_for("cpu", paths_[0]) == work_dir_for("cpu", paths_[1])


def test_source_list_shows_pins_and_recorded_versions(project):
    sources.resolve("upstream@0.3.10")
    sources.resolve("upstream@0.3.9")
    rows = sources.inventory()
    names = [r.name for r in rows]
    assert names[:3] == ["upstream", "upstream@0.3.9", "upstream@0.3.10"] and "atomic-turboquant" in names
    assert rows[0].default and rows[1].llama_cpp_commit == COMMIT and rows[1].origin == "upstream-versions.yaml"


def test_path_source_at_any_rev(project, tmp_path):
    repo = tmp_path / "src"
    repo.mkdir()
    revs = []
    for text in ("one\n", "two\n"):
        (repo / "f.txt").write_text(text)
        for argv in (["git", "init", "-q"], ["git", "add", "."], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", text]):
            subprocess.run(argv, cwd=repo, check=True, capture_output=True)
        revs.append(subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip())
    keys = set()
    for rev, text in zip(revs, ("one\n", "two\n"), strict=True):
        name, spec = sources.resolve(f"path:{repo}@{rev}")
        assert isinstance(spec, sources.PathSource) and spec.rev == rev
        prov = vendor.vendor(name, tree=tmp_path / rev / "llama.cpp")
        assert prov.version == rev and (tmp_path / rev / "llama.cpp" / "f.txt").read_text() == text
        keys.add(vendor.tree_key(name, spec))
    assert len(keys) == 2
