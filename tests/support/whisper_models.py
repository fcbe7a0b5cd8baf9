"""A tiny random multilingual Whisper, built offline with transformers and converted to CTranslate2 with
ctranslate2's own converter (the path real faster-whisper models take), plus test audio in the formats
faster-whisper decodes (wav, flac, mp3, ogg) made with PyAV."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SAMPLE_RATE = 16000
# Whisper v3's vocabulary size: CTranslate2 treats a model as multilingual from 51865 tokens up; the ids past
# the tokenizer's own are padding the converter fills in
VOCAB_SIZE = 51866


def _special_tokens():
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    langs = [f"<|{code}|>" for code in _LANGUAGE_CODES]
    head = ["<|endoftext|>", "<|startoftranscript|>", *langs, "<|translate|>", "<|transcribe|>", "<|startoflm|>",
            "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return head, langs, stamps


def build_tokenizer(target: Path):
    """A byte-level BPE trained on the tiny Llama corpus, then Whisper's special tokens in Whisper's order
    (eot, sot, languages, tasks, ..., notimestamps, timestamps), so faster-whisper's id arithmetic holds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).parent))
    from llama_models import CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    head, langs, stamps = _special_tokens()
    tok.add_special_tokens(head)
    tok.add_tokens(stamps)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=head[1:])
    fast.save_pretrained(str(target))
    return fast


def build_tiny_whisper(target: Path, hf_dir: Path | None = None) -> Path:
    """``target``: the CTranslate2 folder faster-whisper loads (model.bin, config.json, tokenizer.json,
    preprocessor_config.json, vocabulary.json). Deterministic: the same folder every time."""
    import ctranslate2
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    target, hf_dir = Path(target), Path(hf_dir or str(target) + "-hf")
    if (target / "model.bin").exists():
        return target
    hf_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(hf_dir)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _special_tokens()[0]}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, decoder_start_token_id=sot, bos_token_id=eot,
        eos_token_id=eot, pad_token_id=eot)
    model = WhisperForConditionalGeneration(config).eval()
    model.save_pretrained(str(hf_dir), safe_serialization=True)
    gen = GenerationConfig(decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
                           suppress_tokens=[], begin_suppress_tokens=[eot], no_timestamps_token_id=ids["<|notimestamps|>"],
                           lang_to_id={t: ids[t] for t in _special_tokens()[1]},
                           task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
                           is_multilingual=True, max_length=448)
    gen.save_pretrained(str(hf_dir))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(hf_dir))
    converter = ctranslate2.converters.TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"])
    converter.convert(str(target), quantization="float32", force=True)
    # CTranslate2 calls a Whisper multilingual when its vocabulary holds the empty token, as OpenAI's
    # multilingual vocabulary does; a trained BPE has none, so the last padding id becomes it
    vocab_file = target / "vocabulary.json"
    vocab = json.loads(vocab_file.read_text())
    if "" not in vocab:
        vocab[-1] = ""
        vocab_file.write_text(json.dumps(vocab))
    return target


def speech_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """16 kHz float32 PCM: voiced harmonics with a moving pitch and syllable-like bursts (no real speech
    engine is on this machine; a random model transcribes anything into something)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


_CODECS = {"wav": ("wav", "pcm_s16le"), "flac": ("flac", "flac"), "mp3": ("mp3", "libmp3lame"),
           "ogg": ("ogg", "libopus")}


def encode_audio(pcm: np.ndarray, fmt: str, rate: int = SAMPLE_RATE) -> bytes:
    """``pcm`` (float32 mono at ``rate``) as a file in ``fmt`` (wav, flac, mp3, ogg), encoded by PyAV."""
    import av

    container, codec = _CODECS[fmt]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.size, frame_size):
            chunk = samples[start:start + frame_size]
            if chunk.size < frame_size and codec == "libopus":  # opus takes whole frames only
                chunk = np.pad(chunk, (0, frame_size - chunk.size))
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


if __name__ == "__main__":
    folder = build_tiny_whisper(Path(sys.argv[1]))
    print(json.dumps({"model": str(folder)}))
