"""engines/whisper.py, backends/speech.py and codecs/audio.py without a server: load refusals, args, parameters, audio inputs, subtitles."""

from __future__ import annotations

import base64
import functools

import numpy as np
import pytest
from mlserver.types import RequestInput

from modelserve.engines.whisper import parse_args, transcribe_options
from modelserve.errors import BadRequest
from modelserve.backends.speech import subtitles
from modelserve.codecs.audio import audio_rows

from .support.runtimes import kubeai, load_error

pytest.importorskip("faster_whisper")


# a FasterWhisper model named 'w' whose model-settings.json would lie in the folder given
whisper = functools.partial(kubeai, name="w", engine="FasterWhisper")


def test_a_folder_that_is_not_a_ctranslate2_whisper_fails_the_load(tmp_path):
    (tmp_path / "m").mkdir()
    msg = load_error(whisper, tmp_path, url=str(tmp_path / "m"))
    assert "is not a CTranslate2 Whisper folder (no model.bin)" in msg
    (tmp_path / "m" / "model.bin").write_bytes(b"junk")
    assert "has no tokenizer.json" in load_error(whisper, tmp_path, url=str(tmp_path / "m"))
    (tmp_path / "m" / "tokenizer.json").write_text("{}")
    assert "faster-whisper could not load" in load_error(whisper, tmp_path, url=str(tmp_path / "m"))


@pytest.mark.parametrize("extra,fragment", [
    ({"env": {"A": "1"}}, "option 'env' is for engines that run as their own server"),
    ({"engine_command": "/bin/true"}, "option 'engine_command' is for engines"),
    ({"adapters": [{"name": "a", "url": "/tmp"}]}, "option 'adapters' is for engines"),
    ({"args": ["--beam-size", "3"]}, "takes only these args: --device, --compute-type"),
    ({"args": ["--num-workers", "many"]}, "--num-workers needs int"),
    ({"features": ["TextEmbedding"]}, "engine FasterWhisper does not support feature TextEmbedding"),
])
def test_options_that_cannot_apply_in_process_are_refused(tmp_path, extra, fragment):
    (tmp_path / "m").mkdir()
    assert fragment in load_error(whisper, tmp_path, url=str(tmp_path / "m"), **extra)


def test_args_become_whispermodel_settings():
    assert parse_args("w", ["--compute-type=int8", "--num-workers", "3", "--device", "cpu"]) == {
        "compute_type": "int8", "num_workers": 3, "device": "cpu"}


def test_parameters_are_checked_and_mapped():
    langs = ["en", "de"]
    assert transcribe_options({"language": "de", "task": "translate", "beam_size": "3", "temperature": 0,
                               "vad_filter": "true", "word_timestamps": False, "initial_prompt": "Hi"},
                              langs) == {"language": "de", "task": "translate", "beam_size": 3,
                                                 "temperature": 0.0, "vad_filter": True, "word_timestamps": False,
                                                 "initial_prompt": "Hi"}
    assert transcribe_options({"language": None, "initial_prompt": ""}, langs) == {}
    for params, fragment in [({"language": "fr"}, "parameter 'language'"), ({"temperature": 2}, "allowed range"),
                             ({"vad_filter": "yes"}, "must be true or false"), ({"top_k": 3}, "unknown parameter")]:
        with pytest.raises(BadRequest, match=fragment):
            transcribe_options(params, langs)


def test_audio_rows_take_files_and_pcm():
    files = audio_rows(RequestInput(name="audio", datatype="BYTES", shape=[2],
                                    data=[base64.b64encode(b"RIFF1").decode(), b"raw-bytes"]))
    assert files == [b"RIFF1", b"raw-bytes"]
    pcm = audio_rows(RequestInput(name="audio", datatype="FP32", shape=[2, 3], data=[0.1, 0.2, 0.3, 0, 0, 0]))
    assert len(pcm) == 2 and pcm[0].dtype == np.float32 and pcm[0].shape == (3,)
    for inp, fragment in [
        (RequestInput(name="audio", datatype="FP32", shape=[1, 0], data=[]), "no samples"),
        (RequestInput(name="audio", datatype="FP32", shape=[1, 2, 2], data=[0.0] * 4), r"shape \[samples\]"),
        (RequestInput(name="audio", datatype="BYTES", shape=[2], data=["a"]), r"expected shape \[n\]"),
        (RequestInput(name="audio", datatype="BYTES", shape=[1], data=["not base64!"]), "not base64"),
    ]:
        with pytest.raises(BadRequest, match=fragment):
            audio_rows(inp)


def test_subtitles_in_srt_and_vtt():
    segs = [{"start": 0.0, "end": 1.5, "text": " Hello"}, {"start": 61.25, "end": 3725.004, "text": " world "}]
    assert subtitles(segs, "srt") == ("1\n00:00:00,000 --> 00:00:01,500\nHello\n\n"
                                      "2\n00:01:01,250 --> 01:02:05,004\nworld\n")
    assert subtitles(segs, "vtt") == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello\n\n"
                                      "00:01:01.250 --> 01:02:05.004\nworld\n")
