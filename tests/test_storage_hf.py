"""storage.resolve for hf://org/name[@revision]: huggingface_hub's own cache, offline first (no network)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from modelserve import storage
from modelserve.sklearn import WELLKNOWN

from .support.harness import free_port
from .support.hf_cache import fill_hf_cache
from .support.runtimes import model_settings, resolve_error

SHA_MAIN = "a" * 40
SHA_V1 = "1" * 40


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An offline process pointed at a Hugging Face cache of this test's own, holding acme/iris at main and v1."""
    cache = tmp_path / "hf-cache"
    for key in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill_hf_cache(cache, "acme/iris", {"model.joblib": b"main model", "README.md": b"# iris"}, SHA_MAIN)
    fill_hf_cache(cache, "acme/iris", {"model.joblib": b"v1 model"}, SHA_V1, refs=("v1", "refs/pr/1"))
    return cache


def test_the_hand_made_cache_is_one_huggingface_hub_recognises(hf_cache):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hf_cache)
    assert not info.warnings, info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "acme/iris" and repo.repo_type == "model"
    revs = {r.commit_hash: set(r.refs) for r in repo.revisions}
    assert revs == {SHA_MAIN: {"main"}, SHA_V1: {"v1", "refs/pr/1"}}


def test_default_revision_is_main_and_resolves_to_its_snapshot(hf_cache):
    snap = hf_cache / "models--acme--iris" / "snapshots" / SHA_MAIN
    assert storage.resolve(model_settings("hf://acme/iris")) == snap
    got = storage.resolve(model_settings("hf://acme/iris"), WELLKNOWN)
    assert got == snap / "model.joblib" and got.read_bytes() == b"main model"
    assert storage.resolve(model_settings("HF://acme/iris/"), WELLKNOWN) == got  # scheme case, trailing slash


def test_tag_branch_and_commit_revisions(hf_cache):
    v1 = hf_cache / "models--acme--iris" / "snapshots" / SHA_V1
    for rev in ("v1", "refs/pr/1", SHA_V1):
        got = storage.resolve(model_settings(f"hf://acme/iris@{rev}"), WELLKNOWN)
        assert got == v1 / "model.joblib" and got.read_bytes() == b"v1 model", rev
    assert storage.resolve(model_settings(f"hf://acme/iris@{SHA_MAIN}"), WELLKNOWN).read_bytes() == b"main model"
    assert storage.resolve(model_settings("hf://acme/iris@main"), WELLKNOWN).read_bytes() == b"main model"
    # KServe's spelling of the revision: hf://org/name:revision
    assert storage.resolve(model_settings("hf://acme/iris:v1"), WELLKNOWN).read_bytes() == b"v1 model"
    assert storage.parse_hf("m", f"hf://acme/iris:{SHA_V1}") == ("acme/iris", SHA_V1)


def test_hf_home_is_used_when_hf_hub_cache_is_not_set(hf_cache, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    fill_hf_cache(tmp_path / "home" / "hub", "acme/iris", {"model.joblib": b"from HF_HOME"}, "b" * 40)
    assert storage.resolve(model_settings("hf://acme/iris"), WELLKNOWN).read_bytes() == b"from HF_HOME"
    assert storage.hf_cache_dir() == tmp_path / "home" / "hub"


def test_modelserve_cache_dir_does_not_apply_to_hf(hf_cache, tmp_path):
    got = storage.resolve(model_settings("hf://acme/iris"), WELLKNOWN, cache_dir=str(tmp_path / "ours"))
    assert got.is_relative_to(hf_cache) and not (tmp_path / "ours").exists()


def test_missing_repo_offline_names_the_repo_the_revision_and_the_offline_hub(hf_cache):
    msg = resolve_error("hf://acme/roses")
    assert "hf://acme/roses" in msg and "acme/roses is not in the Hugging Face cache" in msg
    assert str(hf_cache) in msg and "offline" in msg and "HF_HUB_OFFLINE" in msg
    msg = resolve_error("hf://acme/roses@v3")
    assert "hf://acme/roses@v3" in msg and "--revision v3" in msg and "HF_HUB_OFFLINE" in msg


def test_missing_revision_offline_lists_the_cached_ones(hf_cache):
    msg = resolve_error("hf://acme/iris@v2")
    assert "hf://acme/iris@v2" in msg and "revision 'v2' of acme/iris is not in the Hugging Face cache" in msg
    assert "cached revisions: main, refs/pr/1, v1" in msg and "HF_HUB_OFFLINE" in msg
    msg = resolve_error(f"hf://acme/iris@{SHA_V1[:7]}")  # a short sha is no ref of its own
    assert "full 40 characters" in msg
    msg = resolve_error("hf://acme/iris@" + "c" * 40)
    assert "revision '" + "c" * 40 + "'" in msg
    import shutil

    shutil.rmtree(hf_cache / "models--acme--iris" / "snapshots" / SHA_V1)  # a ref left without its snapshot
    msg = resolve_error("hf://acme/iris@v1")
    assert f"revision 'v1' of acme/iris points at snapshot {SHA_V1}, which is missing" in msg


def test_unreachable_hub_without_a_cached_copy(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # huggingface_hub read it at its import
    msg = resolve_error("hf://acme/roses@v1")
    assert "hf://acme/roses@v1" in msg and "not in the Hugging Face cache" in msg and "unreachable" in msg
    # the cached snapshot stands in when the hub cannot be reached
    assert storage.resolve(model_settings("hf://acme/iris@v1"), WELLKNOWN).read_bytes() == b"v1 model"


@pytest.mark.parametrize("uri, expected", [
    ("hf://", "no repository"),
    ("hf://@v1", "no repository"),
    ("hf://acme/iris/model.joblib", "not a repository id"),
    ("hf://acme/iris@", "empty revision after '@'"),
    ("hf://acme/iris:", "empty revision after ':'"),
    ("hf://acme/iris@../../etc", "invalid revision"),
    ("hf://acme/iris@/abs", "invalid revision"),
    ("hf://acme/ir is", "invalid repository id 'acme/ir is'"),
    ("hf://acme/iris--x", "invalid repository id"),
    ("hf://-acme/iris", "invalid repository id"),
])
def test_bad_hf_uris_are_refused_clearly(hf_cache, uri, expected):
    msg = resolve_error(uri)
    assert expected in msg and "hf://" in msg


def test_without_huggingface_hub_the_error_says_what_to_install(hf_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    msg = resolve_error("hf://acme/iris")
    assert "hf://acme/iris" in msg and "huggingface_hub" in msg and "huggingface extra: pip install -e '.[huggingface]'" in msg


def test_importing_modelserve_storage_does_not_import_huggingface_hub():
    import subprocess

    code = "import sys, modelserve.storage; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_hf_snapshot_for_a_tokenizer_revision(hf_cache):
    """The helper a runtime calls for a second revision of the same repository (e.g. tokenizer_revision)."""
    got = storage.hf_snapshot("m", "acme/iris", "v1", allow_patterns=["tokenizer*", "*.json"])
    assert got == hf_cache / "models--acme--iris" / "snapshots" / SHA_V1
    assert storage.hf_snapshot("m", "acme/iris") == hf_cache / "models--acme--iris" / "snapshots" / SHA_MAIN
    assert storage.parse_hf("m", "hf://acme/iris@refs/pr/1") == ("acme/iris", "refs/pr/1")
    assert storage.parse_hf("m", "hf://acme/iris") == ("acme/iris", None)


# -- online, against a local stand-in for the hub: huggingface_hub fills the cache itself ----------------
class FakeHub:
    """The few hub routes ``snapshot_download`` uses: ``/api/models/<repo>/revision/<rev>`` (repo info and
    file list), ``/api/models/<repo>/tree/<sha>`` (the file list huggingface_hub 1.x reads) and ``/<repo>/resolve/<rev>/<file>`` (HEAD for metadata, GET for the bytes)."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import unquote, urlsplit

        self.repos: Dict[str, dict] = {}
        self.requests: list = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", headers: Optional[dict] = None, head=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _lookup(self, repo_id: str, rev: str):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return None, None, {"X-Error-Code": "RepoNotFound"}
                sha = rev if rev in repo["commits"] else repo["refs"].get(rev)
                if sha is None:
                    return repo, None, {"X-Error-Code": "RevisionNotFound"}
                return repo, sha, None

            def _route(self, head: bool):
                path = urlsplit(self.path).path
                hub.requests.append((self.command, unquote(path)))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                    repo_id, rev = f"{parts[2]}/{parts[3]}", unquote("/".join(parts[5:]))
                    repo, sha, err = self._lookup(repo_id, rev)
                    if err:
                        return self._send(404, b'{"error": "not found"}', err, head)
                    import json

                    body = json.dumps({"id": repo_id, "sha": sha, "private": False,
                                       "siblings": [{"rfilename": f} for f in repo["commits"][sha]]}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                    # huggingface_hub 1.x lists a commit's files here (list_repo_tree) after repo_info
                    repo, sha, err = self._lookup(f"{parts[2]}/{parts[3]}", unquote(parts[5]))
                    if err:
                        return self._send(404, b'{"error": "not found"}', err, head)
                    import json

                    body = json.dumps([{"type": "file", "path": f, "size": len(data),
                                        "oid": hashlib.sha1(data).hexdigest()}
                                       for f, data in repo["commits"][sha].items()]).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, rev, fname = f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:]))
                    repo, sha, err = self._lookup(repo_id, rev)
                    if err or fname not in repo["commits"][sha]:
                        return self._send(404, b"", err or {"X-Error-Code": "EntryNotFound"}, head)
                    data = repo["commits"][sha][fname]
                    return self._send(200, data, {"X-Repo-Commit": sha,
                                                  "ETag": '"%s"' % hashlib.sha256(data).hexdigest()}, head)
                return self._send(404, b"", {}, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo_id: str, commit: str, files: Dict[str, bytes], refs=("main",)) -> None:
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        repo["commits"][commit] = files
        for ref in refs:
            repo["refs"][ref] = commit

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An online process whose hub is a FakeHub serving acme/iris (main, tag v1), with an empty cache."""
    from huggingface_hub import constants

    fake = FakeHub()
    fake.add("acme/iris", SHA_MAIN, {"model.joblib": b"main model", "tokenizer.json": b"{}",
                                     "sub/weights.bin": b"w" * 1000})
    fake.add("acme/iris", SHA_V1, {"model.joblib": b"v1 model", "tokenizer.json": b'{"v": 1}'}, refs=("v1",))
    for key in ("HF_HOME", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # in case the test process started offline
    fake.cache = tmp_path / "hf-cache"
    yield fake
    fake.close()


def test_online_download_fills_huggingface_hubs_cache_and_offline_reuses_it(hub, monkeypatch):
    from huggingface_hub import scan_cache_dir

    got = storage.resolve(model_settings("hf://acme/iris"), WELLKNOWN)
    snap = hub.cache / "models--acme--iris" / "snapshots" / SHA_MAIN
    assert got == snap / "model.joblib" and got.read_bytes() == b"main model"
    assert (snap / "sub" / "weights.bin").read_bytes() == b"w" * 1000
    assert (hub.cache / "models--acme--iris" / "refs" / "main").read_text() == SHA_MAIN
    got = storage.resolve(model_settings("hf://acme/iris@v1"), WELLKNOWN)
    assert got.read_bytes() == b"v1 model" and got.parent.name == SHA_V1
    (repo,) = scan_cache_dir(hub.cache).repos
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {SHA_MAIN: {"main"}, SHA_V1: {"v1"}}
    # offline, with the hub gone, the same URIs resolve from what huggingface_hub cached
    hub.close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert storage.resolve(model_settings("hf://acme/iris@v1"), WELLKNOWN).read_bytes() == b"v1 model"
    assert storage.resolve(model_settings("hf://acme/iris"), WELLKNOWN).read_bytes() == b"main model"
    assert "is not in the Hugging Face cache" in resolve_error("hf://acme/iris@v2")


def test_hub_down_falls_back_on_the_cached_snapshot(hub, monkeypatch):
    storage.resolve(model_settings("hf://acme/iris@v1"))
    hub.close()
    assert storage.resolve(model_settings("hf://acme/iris@v1"), WELLKNOWN).read_bytes() == b"v1 model"
    msg = resolve_error("hf://acme/iris@v9")
    assert "revision 'v9' of acme/iris is not in the Hugging Face cache" in msg and "unreachable" in msg


def test_online_missing_repo_and_revision(hub):
    msg = resolve_error("hf://acme/roses")
    assert "hf://acme/roses" in msg and "repository acme/roses not found on the hub" in msg and "HF_TOKEN" in msg
    msg = resolve_error("hf://acme/iris@v9")
    assert "hf://acme/iris@v9" in msg and "revision 'v9' not found in acme/iris" in msg


def test_allow_patterns_download_only_those_files(hub):
    snap = storage.hf_snapshot("m", "acme/iris", "v1", allow_patterns=["tokenizer*"])
    assert snap.name == SHA_V1 and (snap / "tokenizer.json").read_bytes() == b'{"v": 1}'
    assert not (snap / "model.joblib").exists()
    assert ("GET", f"/acme/iris/resolve/{SHA_V1}/model.joblib") not in hub.requests
