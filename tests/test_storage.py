"""storage.resolve: local paths, file://, pvc:// and s3:// against a real (moto) S3 server
(hf://: test_storage_hf.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from mlserver.repository.load import load_model_settings
from mlserver.settings import ModelSettings

from modelserve import storage
from modelserve.storage import s3 as storage_s3
from modelserve.errors import ModelLoadError
from modelserve.sklearn import WELLKNOWN

from .support.harness import free_port
from .support.runtimes import SKLEARN, model_settings, resolve_error
from .support.s3server import S3Server, moto_s3


# -- helpers and fixtures ----------------------------------------------------------------------------
def settings_file(folder: Path, uri=None, name="m") -> ModelSettings:
    """A model-settings.json in ``folder``, read back the way MLServer's repository reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    params = {"uri": uri} if uri is not None else {}
    path = folder / "model-settings.json"
    path.write_text(json.dumps({"name": name, "implementation": SKLEARN, "parameters": params}))
    return load_model_settings(str(path))


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("moto")) as srv:
        yield srv


@pytest.fixture
def s3env(s3, monkeypatch, tmp_path) -> S3Server:
    """The process environment pointed at the moto server, with a cache of this test's own."""
    for key in S3Server.UNSET:
        monkeypatch.delenv(key, raising=False)
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MODELSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return s3


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own in the shared bucket."""
    return f"t-{uuid.uuid4().hex[:10]}"


class Spy:
    """Counts the objects storage downloads; ``hook(key, filename, n)`` runs before each download."""

    def __init__(self):
        self.calls = []
        self.hook = None


@pytest.fixture
def spy(monkeypatch) -> Spy:
    spy = Spy()
    real = storage_s3._s3_client

    def client():
        c = real()
        download = c.download_file

        def download_file(bucket, key, filename, *args, **kw):
            spy.calls.append(key)
            if spy.hook is not None:
                spy.hook(key, filename, len(spy.calls))
            return download(bucket, key, filename, *args, **kw)

        c.download_file = download_file
        return c

    monkeypatch.setattr(storage_s3, "_s3_client", client)
    return spy


def leftovers(cache: Path):
    """Temporary or half-swapped folders in the cache."""
    root = cache / "s3"
    return sorted(p.name for p in root.glob(".*") if ".tmp-" in p.name or ".old-" in p.name) if root.exists() else []


# -- local paths -------------------------------------------------------------------------------------
def test_relative_file_is_resolved_against_the_model_settings_folder(tmp_path, monkeypatch):
    folder = tmp_path / "repo" / "iris"
    s = settings_file(folder, "./model.joblib")
    (folder / "model.joblib").write_bytes(b"x")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "model.joblib").write_bytes(b"wrong one")
    monkeypatch.chdir(elsewhere)
    assert storage.resolve(s, WELLKNOWN) == folder / "model.joblib"


def test_folder_with_a_wellknown_name_resolves_to_the_file(tmp_path):
    folder = tmp_path / "iris"
    s = settings_file(folder, "art")
    (folder / "art").mkdir()
    (folder / "art" / "notes.txt").write_text("x")
    (folder / "art" / "model.pkl").write_bytes(b"x")
    assert storage.resolve(s, WELLKNOWN) == folder / "art" / "model.pkl"
    (folder / "art" / "model.joblib").write_bytes(b"x")  # the first well-known name wins
    assert storage.resolve(s, WELLKNOWN) == folder / "art" / "model.joblib"


def test_folder_without_a_wellknown_name_is_returned_as_the_folder(tmp_path):
    folder = tmp_path / "mlflow"
    s = settings_file(folder, "./model")
    (folder / "model").mkdir()
    (folder / "model" / "MLmodel").write_text("flavors: {}")
    assert storage.resolve(s, WELLKNOWN) == folder / "model"
    assert storage.resolve(s) == folder / "model"


def test_no_uri_means_the_model_folder_as_mlserver_does(tmp_path):
    folder = tmp_path / "iris"
    s = settings_file(folder)  # MLServer fills in the folder of model-settings.json
    (folder / "model.skops").write_bytes(b"x")
    assert storage.resolve(s, WELLKNOWN) == folder / "model.skops"


def test_uri_not_set_at_all_is_refused(tmp_path):
    s = ModelSettings.model_validate({"name": "m", "implementation": SKLEARN, "parameters": {}})
    with pytest.raises(ModelLoadError, match="parameters.uri is not set"):
        storage.resolve(s)


def test_missing_local_path_names_the_path_and_the_uri(tmp_path):
    folder = tmp_path / "iris"
    s = settings_file(folder, "./nope/model.joblib")
    with pytest.raises(ModelLoadError) as info:
        storage.resolve(s, WELLKNOWN)
    msg = str(info.value)
    assert str(folder / "nope" / "model.joblib") in msg and "'./nope/model.joblib'" in msg
    assert info.value.status_code == 422


def test_file_uris(tmp_path):
    folder = tmp_path / "iris"
    (folder / "art").mkdir(parents=True)
    (folder / "art" / "model.joblib").write_bytes(b"x")
    source = folder / "model-settings.json"
    target = folder / "art" / "model.joblib"
    assert storage.resolve(model_settings(f"file://{folder}/art", source=source), WELLKNOWN) == target
    assert storage.resolve(model_settings(f"file://localhost{folder}/art/model.joblib", source=source)) == target
    assert storage.resolve(model_settings("file://./art", source=source), WELLKNOWN) == target  # relative
    assert storage.resolve(model_settings("FILE://art/model.joblib", source=source)) == target


def test_local_names_with_url_characters(tmp_path):
    folder = tmp_path / "iris"
    folder.mkdir()
    for name in ("model#1.joblib", "model?v=2.joblib", "a;b c.joblib"):
        (folder / name).write_bytes(b"x")
        source = folder / "model-settings.json"
        assert storage.resolve(model_settings(f"./{name}", source=source)) == folder / name
        assert storage.resolve(model_settings(f"file://{folder}/{name}", source=source)) == folder / name


@pytest.mark.parametrize("uri", ["gs://bucket/model.joblib", "http://example.com/model.joblib",
                                 "https://example.com/m", "hdfs://nn/models/m", "az://c/m"])
def test_other_schemes_are_refused_listing_the_supported_ones(uri):
    msg = resolve_error(uri)
    scheme = uri.split("://")[0]
    assert f"unsupported URI scheme '{scheme}://'" in msg and uri in msg
    for supported in ("local path", "file://", "s3://bucket/key", "pvc://claim/path", "hf://org/name[@revision]"):
        assert supported in msg


# -- pvc:// ------------------------------------------------------------------------------------------
def test_pvc_resolves_under_the_root_given_by_the_option(tmp_path, monkeypatch):
    root = tmp_path / "pvc"
    (root / "models" / "iris").mkdir(parents=True)
    (root / "models" / "iris" / "model.joblib").write_bytes(b"x")
    monkeypatch.setenv("MODELSERVE_PVC_ROOT", str(tmp_path / "not-this-one"))
    # KServe mounts the claim itself at the root: the claim name is not part of the path
    got = storage.resolve(model_settings("pvc://my-claim/models/iris"), WELLKNOWN, pvc_root=str(root))
    assert got == root / "models" / "iris" / "model.joblib"
    got = storage.resolve(model_settings("pvc://my-claim/models/iris/model.joblib"), pvc_root=str(root))
    assert got == root / "models" / "iris" / "model.joblib"


def test_pvc_root_from_the_environment(tmp_path, monkeypatch):
    root = tmp_path / "mnt"
    (root / "iris").mkdir(parents=True)
    (root / "iris" / "MLmodel").write_text("x")
    monkeypatch.setenv("MODELSERVE_PVC_ROOT", str(root))
    assert storage.resolve(model_settings("pvc://claim/iris/"), WELLKNOWN) == root / "iris"
    assert storage.resolve(model_settings("pvc://claim"), WELLKNOWN) == root  # the whole claim


def test_pvc_default_root_is_kserves_mount_point(monkeypatch):
    monkeypatch.delenv("MODELSERVE_PVC_ROOT", raising=False)
    msg = resolve_error("pvc://claim/nowhere-" + uuid.uuid4().hex)
    assert "/mnt/pvc/nowhere-" in msg


def test_pvc_one_folder_per_claim_under_the_root_works_too(tmp_path):
    root = tmp_path / "pvc"
    (root / "claim-a" / "iris").mkdir(parents=True)
    (root / "claim-a" / "iris" / "model.pkl").write_bytes(b"x")
    got = storage.resolve(model_settings("pvc://claim-a/iris"), WELLKNOWN, pvc_root=str(root))
    assert got == root / "claim-a" / "iris" / "model.pkl"


def test_pvc_missing_path_and_escapes(tmp_path):
    root = tmp_path / "pvc"
    root.mkdir()
    msg = resolve_error("pvc://claim/models/iris", pvc_root=str(root))
    assert str(root / "models" / "iris") in msg and "pvc://claim/models/iris" in msg
    assert "pvc_root" in msg and "MODELSERVE_PVC_ROOT" in msg
    (tmp_path / "secret").write_text("x")
    msg = resolve_error("pvc://claim/../secret", pvc_root=str(root))
    assert "outside" in msg
    msg = resolve_error("pvc:///models/iris", pvc_root=str(root))
    assert "no claim name" in msg


# -- s3:// -------------------------------------------------------------------------------------------
def test_s3_single_object(s3env, prefix, tmp_path):
    uri = s3env.put(f"{prefix}/iris/model.joblib", b"the model bytes")
    s3env.put(f"{prefix}/iris/other.txt", b"not wanted")
    got = storage.resolve(model_settings(uri), WELLKNOWN)
    assert got.name == "model.joblib" and got.read_bytes() == b"the model bytes"
    assert got.is_relative_to(tmp_path / "cache")
    assert not (got.parent / "other.txt").exists()


def test_s3_prefix_is_a_folder_with_nested_keys(s3env, prefix):
    s3env.put(f"{prefix}/iris/model.joblib", b"model")
    s3env.put(f"{prefix}/iris/sub/deeper/weights.bin", b"weights")
    s3env.put(f"{prefix}/iris/", b"")  # console-made "folder" markers
    s3env.put(f"{prefix}/iris/empty/", b"")
    s3env.put(f"{prefix}/iris-other/model.joblib", b"sibling")
    for uri in (f"s3://models/{prefix}/iris/", f"s3://models/{prefix}/iris"):
        got = storage.resolve(model_settings(uri), WELLKNOWN)
        assert got.name == "model.joblib" and got.read_bytes() == b"model"
        folder = storage.resolve(model_settings(uri))
        assert folder.is_dir() and folder == got.parent
        assert (folder / "sub" / "deeper" / "weights.bin").read_bytes() == b"weights"
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                       and not p.name.startswith(".modelserve"))
        assert files == ["model.joblib", "sub/deeper/weights.bin"]


def test_s3_whole_bucket(s3env):
    bucket = f"whole-{uuid.uuid4().hex[:8]}"
    s3env.client().create_bucket(Bucket=bucket)
    s3env.put("model.joblib", b"root model", bucket=bucket)
    for uri in (f"s3://{bucket}", f"s3://{bucket}/"):
        got = storage.resolve(model_settings(uri), WELLKNOWN)
        assert got.name == "model.joblib" and got.read_bytes() == b"root model"


def test_s3_key_named_model_does_not_match_model2(s3env, prefix):
    s3env.put(f"{prefix}/model2.pkl", b"other model")
    msg = resolve_error(f"s3://models/{prefix}/model")
    assert f"s3://models/{prefix}/model" in msg and "not found" in msg
    s3env.put(f"{prefix}/model/model.pkl", b"this model")
    got = storage.resolve(model_settings(f"s3://models/{prefix}/model"), WELLKNOWN)
    assert got.read_bytes() == b"this model"
    assert sorted(p.name for p in got.parent.iterdir() if not p.name.startswith(".")) == ["model.pkl"]


def test_s3_object_and_prefix_of_the_same_name(s3env, prefix):
    s3env.put(f"{prefix}/iris", b"an object named iris")
    s3env.put(f"{prefix}/iris/model.joblib", b"model")
    got = storage.resolve(model_settings(f"s3://models/{prefix}/iris"), WELLKNOWN)
    assert got.is_file() and got.read_bytes() == b"an object named iris"
    got = storage.resolve(model_settings(f"s3://models/{prefix}/iris/"), WELLKNOWN)  # the slash asks for the folder
    assert got.name == "model.joblib" and got.read_bytes() == b"model"


def test_s3_keys_with_url_characters(s3env, prefix):
    for key in (f"{prefix}/v#1/model.joblib", f"{prefix}/a?b=c/model.joblib", f"{prefix}/with space/model.joblib"):
        uri = s3env.put(key, key.encode())
        assert storage.resolve(model_settings(uri)).read_bytes() == key.encode()
        assert storage.resolve(model_settings(uri.rsplit("/", 1)[0]), WELLKNOWN).read_bytes() == key.encode()


def test_s3_missing_object_bucket_and_bucket_name(s3env, prefix):
    msg = resolve_error(f"s3://models/{prefix}/nope/model.joblib")
    assert f"s3://models/{prefix}/nope/model.joblib" in msg and "not found" in msg
    msg = resolve_error(f"s3://no-such-bucket-{prefix}/model.joblib")
    assert f"s3://no-such-bucket-{prefix}/model.joblib" in msg and "does not exist" in msg
    assert "no bucket" in resolve_error("s3:///model.joblib")


def test_s3_missing_credentials(s3env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    msg = resolve_error("s3://models/any/model.joblib")
    assert "credentials" in msg and "AWS_ACCESS_KEY_ID" in msg


def test_s3_unreachable_endpoint_without_a_cached_copy(s3env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    msg = resolve_error("s3://models/any/model.joblib")
    assert "cannot reach S3" in msg and "s3://models/any/model.joblib" in msg


def test_s3_unreachable_endpoint_falls_back_on_the_cached_copy(s3env, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with moto_s3(tmp_path / "moto-down") as down:  # a server of its own, to stop
        monkeypatch.setenv("AWS_ENDPOINT_URL", down.endpoint)
        uri = down.put("iris/model.joblib", b"cached")
        first = storage.resolve(model_settings(uri))
    with caplog.at_level(logging.WARNING, logger="mlserver.modelserve.storage"):
        assert storage.resolve(model_settings(uri)) == first
    assert first.read_bytes() == b"cached"
    assert "cannot reach S3" in caplog.text and "using the copy" in caplog.text
    # the cache is per endpoint: the same bucket and key elsewhere has no copy
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert "cannot reach S3" in resolve_error(uri)


def test_kserve_s3_endpoint_variables(s3env, prefix, monkeypatch):
    uri = s3env.put(f"{prefix}/model.joblib", b"via S3_ENDPOINT")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("S3_ENDPOINT", s3env.endpoint.split("://", 1)[1])
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    assert storage.resolve(model_settings(uri)).read_bytes() == b"via S3_ENDPOINT"
    monkeypatch.delenv("S3_USE_HTTPS")
    assert storage_s3._s3_client().meta.endpoint_url == "https://" + s3env.endpoint.split("://", 1)[1]
    monkeypatch.setenv("S3_USE_HTTPS", "false")
    assert storage_s3._s3_client().meta.endpoint_url == s3env.endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere:9000")  # the AWS variable wins
    assert storage_s3._s3_client().meta.endpoint_url == "http://elsewhere:9000"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert storage_s3._s3_client().meta.region_name == "eu-west-3"


# -- the cache ---------------------------------------------------------------------------------------
def test_cache_hit_does_not_download_again(s3env, prefix, spy, caplog):
    uri = s3env.put(f"{prefix}/iris/model.joblib", b"v1")
    first = storage.resolve(model_settings(uri), WELLKNOWN)
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    assert spy.calls == [f"{prefix}/iris/model.joblib"]
    with caplog.at_level(logging.INFO, logger="mlserver.modelserve.storage"):
        second = storage.resolve(model_settings(uri), WELLKNOWN)
    assert second == first and (second.stat().st_mtime_ns, second.stat().st_ino) == stamp
    assert len(spy.calls) == 1
    assert "found in the cache" in caplog.text
    # the prefix is its own entry
    storage.resolve(model_settings(f"s3://models/{prefix}/iris/"), WELLKNOWN)
    storage.resolve(model_settings(f"s3://models/{prefix}/iris/"), WELLKNOWN)
    assert len(spy.calls) == 2


def test_cache_dir_option_beats_the_environment(s3env, prefix, tmp_path):
    uri = s3env.put(f"{prefix}/model.joblib", b"x")
    got = storage.resolve(model_settings(uri), cache_dir=str(tmp_path / "opt"))
    assert got.is_relative_to(tmp_path / "opt") and not (tmp_path / "cache").exists()


def test_cache_refreshes_when_the_object_changes(s3env, prefix, spy, tmp_path):
    uri = s3env.put(f"{prefix}/model.joblib", b"version 1")
    assert storage.resolve(model_settings(uri)).read_bytes() == b"version 1"
    s3env.put(f"{prefix}/model.joblib", b"version 2")  # same size, new ETag
    got = storage.resolve(model_settings(uri))
    assert got.read_bytes() == b"version 2" and len(spy.calls) == 2
    assert leftovers(tmp_path / "cache") == []
    assert storage.resolve(model_settings(uri)).read_bytes() == b"version 2" and len(spy.calls) == 2


def test_cache_refreshes_when_a_prefix_gains_or_loses_a_file(s3env, prefix, spy):
    uri = f"s3://models/{prefix}/m/"
    s3env.put(f"{prefix}/m/model.joblib", b"model")
    folder = storage.resolve(model_settings(uri))
    s3env.put(f"{prefix}/m/extra.txt", b"new")
    assert (storage.resolve(model_settings(uri)) / "extra.txt").read_bytes() == b"new"
    s3env.delete(f"{prefix}/m/extra.txt")
    assert not (storage.resolve(model_settings(uri)) / "extra.txt").exists()
    assert (folder / "model.joblib").read_bytes() == b"model"


def test_cache_entry_damaged_on_disk_is_downloaded_again(s3env, prefix, spy):
    uri = f"s3://models/{prefix}/m/"
    s3env.put(f"{prefix}/m/model.joblib", b"model")
    s3env.put(f"{prefix}/m/tokenizer.json", b"{}")
    folder = storage.resolve(model_settings(uri))
    (folder / "tokenizer.json").unlink()
    assert (storage.resolve(model_settings(uri)) / "tokenizer.json").read_bytes() == b"{}"
    assert len(spy.calls) == 4
    (folder / "model.joblib").write_bytes(b"mod")  # truncated
    assert (storage.resolve(model_settings(uri)) / "model.joblib").read_bytes() == b"model"
    (folder / ".modelserve-complete").unlink()  # an entry without its marker is never trusted
    assert (storage.resolve(model_settings(uri)) / "model.joblib").read_bytes() == b"model"
    assert len(spy.calls) == 8


def test_unusable_cache_folder_is_a_clear_error(s3env, prefix, tmp_path):
    uri = s3env.put(f"{prefix}/model.joblib", b"x")
    (tmp_path / "a-file").write_text("x")
    msg = resolve_error(uri, cache_dir=str(tmp_path / "a-file" / "cache"))
    assert str(tmp_path / "a-file") in msg and "cache_dir" in msg and "MODELSERVE_CACHE_DIR" in msg


def test_download_logs_progress(s3env, prefix, monkeypatch, caplog):
    monkeypatch.setattr(storage_s3, "PROGRESS_SECONDS", 0.0)
    uri = s3env.put(f"{prefix}/big/model.joblib", os.urandom(300_000))
    with caplog.at_level(logging.INFO, logger="mlserver.modelserve.storage"):
        storage.resolve(model_settings(uri))
    text = caplog.text
    assert f"downloading {uri} (1 file(s), 0.3 MB)" in text
    assert "100%" in text and f"downloaded {uri}" in text


# -- atomic downloads --------------------------------------------------------------------------------
def test_interrupted_download_leaves_nothing_trusted_and_a_retry_succeeds(s3env, prefix, spy, tmp_path):
    uri = f"s3://models/{prefix}/m/"
    s3env.put(f"{prefix}/m/a-config.json", b'{"a": 1}')
    s3env.put(f"{prefix}/m/model.joblib", b"model bytes" * 1000)

    def break_second(key, filename, n):
        if n == 2:
            Path(filename).write_bytes(b"model by")  # half written, then the connection drops
            raise ConnectionResetError("connection reset by peer")

    spy.hook = break_second
    msg = resolve_error(uri)
    assert uri in msg and "download failed" in msg and "connection reset" in msg
    cache = tmp_path / "cache"
    assert leftovers(cache) == []
    assert not [p for p in (cache / "s3").iterdir() if not p.name.startswith(".")]  # no entry at all
    spy.hook = None
    got = storage.resolve(model_settings(uri), WELLKNOWN)
    assert got.read_bytes() == b"model bytes" * 1000
    assert (got.parent / "a-config.json").read_bytes() == b'{"a": 1}'
    assert len(spy.calls) == 4


def test_object_changing_size_during_download_is_not_trusted(s3env, prefix, spy, tmp_path):
    uri = s3env.put(f"{prefix}/model.joblib", b"short")

    def grow(key, filename, n):
        if n == 1:
            s3env.put(key, b"much longer now")

    spy.hook = grow
    msg = resolve_error(uri)
    assert "got 15 bytes" in msg and "the listing said 5" in msg
    spy.hook = None
    assert storage.resolve(model_settings(uri)).read_bytes() == b"much longer now"


def test_download_corrupted_in_transit_is_never_cached_and_a_retry_succeeds(s3env, prefix, tmp_path, monkeypatch):
    uri = f"s3://models/{prefix}/m/"
    s3env.put(f"{prefix}/m/model.joblib", b"model bytes" * 1000)
    real, corrupt = storage_s3._s3_client, [True]

    def client():
        c = real()
        download = c.download_file

        def download_file(bucket, key, filename, *args, **kw):
            download(bucket, key, filename, *args, **kw)
            if corrupt[0]:  # same size, other bytes: what a flipped bit on the wire leaves
                Path(filename).write_bytes(b"x" * Path(filename).stat().st_size)

        c.download_file = download_file
        return c

    monkeypatch.setattr(storage_s3, "_s3_client", client)
    msg = resolve_error(uri)
    assert "model.joblib: the downloaded bytes do not match the object's ETag" in msg
    cache = tmp_path / "cache"
    assert leftovers(cache) == [] and not [p for p in (cache / "s3").iterdir() if not p.name.startswith(".")]
    corrupt[0] = False
    assert storage.resolve(model_settings(uri), WELLKNOWN).read_bytes() == b"model bytes" * 1000


def test_multipart_etags_are_not_taken_for_an_md5(s3env, prefix):
    from boto3.s3.transfer import TransferConfig

    key = f"{prefix}/big/model.joblib"
    body = os.urandom(6 * 1024 * 1024)
    (Path(os.environ["MODELSERVE_CACHE_DIR"]).parent / "big").write_bytes(body)
    s3env.client().upload_file(str(Path(os.environ["MODELSERVE_CACHE_DIR"]).parent / "big"), "models", key,
                               Config=TransferConfig(multipart_threshold=5 * 1024 * 1024,
                                                     multipart_chunksize=5 * 1024 * 1024))
    etag = s3env.client().head_object(Bucket="models", Key=key)["ETag"]
    assert "-" in etag  # a multipart upload
    assert storage.resolve(model_settings(f"s3://models/{key}")).read_bytes() == body


KILLED_CHILD = textwrap.dedent("""
    import os, signal, sys
    from mlserver.settings import ModelSettings
    from modelserve import storage
    from modelserve.storage import s3 as storage_s3

    real = storage_s3._s3_client

    def client():
        c = real()
        download, n = c.download_file, []

        def download_file(bucket, key, filename, *a, **kw):
            n.append(key)
            if len(n) == 2:  # the pod is killed halfway through the second file
                with open(filename, "wb") as f:
                    f.write(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
            return download(bucket, key, filename, *a, **kw)

        c.download_file = download_file
        return c

    storage_s3._s3_client = client
    s = ModelSettings.model_validate({"name": "m", "implementation": "x.Y", "parameters": {"uri": sys.argv[1]}})
    storage.resolve(s)
""")


def test_killed_download_is_ignored_and_its_folder_swept_once_abandoned(s3env, prefix, tmp_path, spy):
    uri = f"s3://models/{prefix}/m/"
    s3env.put(f"{prefix}/m/a.json", b"{}")
    s3env.put(f"{prefix}/m/model.joblib", b"full model")
    proc = subprocess.run([sys.executable, "-c", KILLED_CHILD, uri], env=dict(os.environ), timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    cache = tmp_path / "cache" / "s3"
    stale = [p for p in cache.iterdir() if ".tmp-" in p.name]
    assert len(stale) == 1 and (stale[0] / "model.joblib").read_bytes() == b"half"
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]
    # a fake finished-looking tmp folder must not be trusted either
    fake = cache / (stale[0].name.split(".tmp-")[0] + ".tmp-1-deadbeef")
    fake.mkdir()
    (fake / "model.joblib").write_bytes(b"evil")
    (fake / ".modelserve-complete").write_text("[]")

    got = storage.resolve(model_settings(uri), WELLKNOWN)
    assert got.read_bytes() == b"full model"
    assert stale[0].exists() and fake.exists()  # fresh: they may belong to a live loader
    old = time.time() - 2 * storage_s3.STALE_SECONDS
    for folder in (stale[0], fake):
        for p in [folder, *folder.rglob("*")]:
            os.utime(p, (old, old))
    s3env.put(f"{prefix}/m/model.joblib", b"full model v2")  # the next download sweeps
    assert storage.resolve(model_settings(uri), WELLKNOWN).read_bytes() == b"full model v2"
    assert not stale[0].exists() and not fake.exists()
    assert leftovers(tmp_path / "cache") == []


def test_concurrent_loaders_download_once(s3env, prefix, spy):
    uri = s3env.put(f"{prefix}/model.joblib", b"shared")
    spy.hook = lambda key, filename, n: time.sleep(1.0)
    barrier = threading.Barrier(3)
    results, errors = [], []

    def load():
        barrier.wait()
        try:
            path = storage.resolve(model_settings(uri))
            results.append((path, path.read_bytes()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 3 and len({r for r in results}) == 1 and results[0][1] == b"shared"
    assert len(spy.calls) == 1


def test_object_key_escaping_the_folder_is_refused(s3env, prefix):
    s3env.put(f"{prefix}/m/model.joblib", b"x")
    try:
        s3env.put(f"{prefix}/m/../../escape.txt", b"x")
    except Exception:  # pragma: no cover - the server may refuse such keys itself
        pytest.skip("the S3 server refuses keys with '..'")
    keys = [o["Key"] for o in s3env.client().list_objects_v2(Bucket="models", Prefix=prefix)["Contents"]]
    if f"{prefix}/m/../../escape.txt" not in keys:
        pytest.skip(f"the S3 server normalised the key: {keys}")
    msg = resolve_error(f"s3://models/{prefix}/m/")
    assert "escapes the download folder" in msg
