"""KubeAIRuntime with engine FasterWhisper behind a real mlserver: a tiny random Whisper converted by
CTranslate2's own converter; our answers equal a direct ``faster_whisper.WhisperModel.transcribe`` on the same
model and audio, over V2 (JSON base64, raw audio bodies, PCM) and the official OpenAI client."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests

from ..support.harness import Server, write_model
from ..support.whisper_models import build_tiny_whisper, encode_audio, speech_like

openai = pytest.importorskip("openai")
faster_whisper = pytest.importorskip("faster_whisper")

GREEDY = {"temperature": 0.0, "beam_size": 1}  # no temperature fallback: sampling would differ run to run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper") / "ct2")


@pytest.fixture(scope="module")
def direct(model_dir):
    model = faster_whisper.WhisperModel(str(model_dir), device="cpu", compute_type="default")

    def run(audio, **kw):
        audio = io.BytesIO(audio) if isinstance(audio, bytes) else audio
        segments, info = model.transcribe(audio, **kw)
        segments = list(segments)
        return {"text": "".join(s.text for s in segments).strip(), "language": info.language,
                "segments": [(round(s.start, 3), round(s.end, 3), s.text) for s in segments],
                "words": [w.word for s in segments for w in (s.words or [])]}
    return run


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("whisper-server")
    write_model(root, "whisper", {"implementation": "modelserve.kubeai.KubeAIRuntime", "parallel_workers": 0,
                                  "parameters": {"extra": {"engine": "FasterWhisper", "url": str(model_dir),
                                                           "args": ["--num-workers", "2"]}}})
    srv = Server(root, parallel_workers=0).start(timeout=180)
    srv.client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clips():
    return {fmt: encode_audio(speech_like(2.0, seed=1), fmt) for fmt in ("wav", "flac", "mp3", "ogg")}


def v2_files(files, **params):
    body = {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [len(files)],
                        "data": [base64.b64encode(f).decode() for f in files]}],
            "outputs": [{"name": "text"}, {"name": "segments"}, {"name": "language"}]}
    if params:
        body["parameters"] = params
    return body


def answers(res):
    assert res.status_code == 200, res.text
    out = {o["name"]: o["data"] for o in res.json()["outputs"]}
    return [{"text": t, "language": lang, "segments": [(s["start"], s["end"], s["text"]) for s in json.loads(seg)],
             "words": [w["word"] for s in json.loads(seg) for w in s.get("words", [])]}
            for t, seg, lang in zip(out["text"], out["segments"], out["language"])]


def test_v2_base64_files_equal_a_direct_transcribe(server, direct, clips):
    files = [clips["wav"], clips["flac"]]
    got = answers(server.infer("whisper", v2_files(files, **GREEDY)))
    assert got == [direct(f, **GREEDY) for f in files]
    assert got[0]["segments"], got


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
def test_a_raw_audio_body_is_transcribed_like_a_direct_call(server, direct, clips, fmt):
    res = requests.post(f"{server.url}/v2/models/whisper/infer", data=clips[fmt], timeout=60,
                        params={**GREEDY, "language": "en"}, headers={"Content-Type": "application/octet-stream"})
    assert res.status_code == 200, res.text
    out = res.json()["outputs"][0]
    assert out["name"] == "text" and out["datatype"] == "BYTES" and out["shape"] == [1]
    assert out["data"][0] == direct(clips[fmt], language="en", **GREEDY)["text"]


def test_fp32_pcm_and_every_parameter_reach_faster_whisper(server, direct):
    pcm = speech_like(1.5, seed=2)
    params = {"language": "de", "task": "translate", "beam_size": 2, "temperature": 0.0, "word_timestamps": True,
              "vad_filter": False, "initial_prompt": "Hello there"}
    body = {"inputs": [{"name": "audio", "datatype": "FP32", "shape": [1, pcm.size], "data": pcm.tolist()}],
            "outputs": [{"name": "text"}, {"name": "segments"}, {"name": "language"}], "parameters": params}
    got = answers(server.infer("whisper", body))[0]
    assert got == direct(pcm, **params)
    assert got["language"] == "de" and got["words"]


def test_openai_transcriptions_in_every_response_format(server, direct, clips):
    want = direct(clips["wav"], language="en", temperature=0.0)
    kw = dict(model="whisper", language="en", temperature=0.0)
    res = server.client.audio.transcriptions.create(file=("a.wav", clips["wav"]), **kw)
    assert res.text == want["text"]
    text = server.client.audio.transcriptions.create(file=("a.wav", clips["wav"]), response_format="text", **kw)
    assert text.strip() == want["text"]
    verbose = server.client.audio.transcriptions.create(file=("a.wav", clips["wav"]), response_format="verbose_json",
                                                        timestamp_granularities=["word", "segment"], **kw)
    assert verbose.language == "en" and verbose.duration == pytest.approx(2.0, abs=0.01)
    assert [(s.start, s.end, s.text) for s in verbose.segments] == direct(
        clips["wav"], language="en", temperature=0.0, word_timestamps=True)["segments"]
    assert verbose.words and all(w.end >= w.start for w in verbose.words)
    srt = server.client.audio.transcriptions.create(file=("a.wav", clips["wav"]), response_format="srt", **kw)
    assert srt.startswith("1\n00:00:") and " --> " in srt and want["segments"][0][2].strip() in srt
    vtt = server.client.audio.transcriptions.create(file=("a.wav", clips["wav"]), response_format="vtt", **kw)
    assert vtt.startswith("WEBVTT\n\n00:00:") and "." in vtt.splitlines()[2]


def test_openai_translations_are_whispers_translate_task(server, direct, clips):
    """/v1/audio/translations with the official client: Whisper's translate task (into English), OpenAI's formats."""
    want = direct(clips["wav"], task="translate", temperature=0.0)
    res = server.client.audio.translations.create(model="whisper", file=("a.wav", clips["wav"]), temperature=0.0)
    assert res.text == want["text"]
    verbose = server.client.audio.translations.create(model="whisper", file=("a.wav", clips["wav"]),
                                                      temperature=0.0, response_format="verbose_json")
    assert [(s.start, s.end, s.text) for s in verbose.segments] == want["segments"]
    assert verbose.model_extra["task"] == "translate"
    srt = server.client.audio.translations.create(model="whisper", file=("a.wav", clips["wav"]), temperature=0.0,
                                                  response_format="srt")
    assert srt.startswith("1\n00:00:")
    # a translation has no source language to give: refused by name, as OpenAI's API has no such field
    r = requests.post(f"{server.url}/v1/audio/translations", files={"file": ("a.wav", clips["wav"])},
                      data={"model": "whisper", "language": "de"}, timeout=60)
    assert r.status_code == 400 and "field 'language' is not supported" in r.json()["error"]["message"], r.text


def test_metadata_names_the_speech_tensors(server):
    meta = requests.get(f"{server.url}/v2/models/whisper", timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == ["audio"]
    assert [o["name"] for o in meta["outputs"]] == ["text", "segments", "language"]


@pytest.mark.parametrize("body,fragment", [
    (v2_files([b"this is not audio at all" * 10]), "audio 0 is not an audio file that can be decoded"),
    (v2_files([b""]), "audio 0 is empty (0 bytes)"),
    ({"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, "row 0 is not base64"),
    ({"inputs": [{"name": "audio", "datatype": "FP32", "shape": [2], "data": [0.1, "NaN"]}]}, "audio"),
    ({"inputs": [{"name": "audio", "datatype": "INT32", "shape": [1], "data": [1]}]}, "datatype must be BYTES"),
    ({"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [0], "data": []}]}, "empty batch"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, "unknown input 'text' (this model takes: audio)"),
    ({**v2_files([b"RIFF"]), "parameters": {"max_tokens": 3}}, "unknown parameter 'max_tokens'"),
    ({**v2_files([b"RIFF"]), "parameters": {"language": "klingon"}}, "parameter 'language'"),
    ({**v2_files([b"RIFF"]), "parameters": {"task": "summarise"}}, "parameter 'task'"),
    ({**v2_files([b"RIFF"]), "parameters": {"beam_size": 0}}, "parameter 'beam_size' is 0"),
])
def test_bad_v2_input_is_a_400_naming_the_problem(server, clips, body, fragment):
    res = server.infer("whisper", body)
    assert res.status_code == 400, res.text
    assert fragment in res.json()["error"]
    assert server.infer("whisper", v2_files([clips["wav"]], **GREEDY)).status_code == 200


def test_bad_raw_bodies_are_400s(server):
    res = requests.post(f"{server.url}/v2/models/whisper/infer", data=b"not audio", timeout=30,
                        headers={"Content-Type": "application/octet-stream"})
    assert res.status_code == 400 and "not an audio file" in res.json()["error"]
    res = requests.post(f"{server.url}/v2/models/whisper/infer", data=b"", timeout=30,
                        headers={"Content-Type": "audio/wav"})
    assert res.status_code == 400 and "empty" in res.json()["error"]


@pytest.mark.parametrize("data,files,fragment", [
    ({"model": "whisper", "response_format": "docx"}, True, "response_format must be one of"),
    ({"model": "whisper"}, False, "'file' is required"),
    ({"model": "whisper", "language": "xx"}, True, "parameter 'language'"),
    ({"model": "whisper", "chunking_strategy": "auto"}, True, "field 'chunking_strategy' is not supported"),
    ({"model": "nope"}, True, "model 'nope' not found"),
])
def test_bad_openai_transcription_requests(server, clips, data, files, fragment):
    res = requests.post(f"{server.url}/v1/audio/transcriptions", data=data, timeout=30,
                        files={"file": ("a.wav", clips["wav"])} if files else {"language": (None, "en")})
    assert 400 <= res.status_code < 500, res.text
    assert fragment in res.json()["error"]["message"]


def test_a_non_audio_file_on_the_openai_route(server):
    with pytest.raises(openai.BadRequestError) as err:
        server.client.audio.transcriptions.create(model="whisper", file=("a.wav", b"garbage" * 50))
    assert "not an audio file" in str(err.value)


GRPC_AUDIO = r"""
import base64, json, sys
import numpy as np
import tritonclient.grpc as grpcclient
req = json.load(sys.stdin)
client = grpcclient.InferenceServerClient(url=req["url"])
audio = grpcclient.InferInput("audio", [1], "BYTES")
audio.set_data_from_numpy(np.array([base64.b64decode(req["file"])], dtype=object))
res = client.infer("whisper", [audio], parameters=req["parameters"])
print(json.dumps([v.decode() for v in res.as_numpy("text").ravel()]))
"""


def test_grpc_takes_the_audio_file_as_raw_bytes(server, direct, clips):
    import subprocess
    import sys

    req = {"url": server.grpc_url, "file": base64.b64encode(clips["mp3"]).decode(),
           "parameters": {"language": "en", "temperature": "0", "beam_size": 1}}
    proc = subprocess.run([sys.executable, "-c", GRPC_AUDIO], input=json.dumps(req), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [direct(clips["mp3"], language="en", **GREEDY)["text"]]
