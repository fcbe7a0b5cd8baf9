"""Tiny random Llama (with a locally trained byte-level BPE tokenizer) and LoRA adapters for it, built
offline and deterministically, so LLM-runtime tests (vLLM included) need no hub download."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# Llama-2-like plain-text turns; bos_token is written here because chat prompts are tokenized without
# special tokens (vLLM and apply_chat_template both do that), and eos ends every turn so replies stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)

# A few hundred words of plain English: enough merges to fill a 1024-token vocab, small enough to train in
# well under a second. Its content does not matter, only that common English splits into few tokens.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A model server loads a model once and then answers many
requests over the network. Each request carries a prompt, and the server returns the text that the model
writes after it. Small models are fast to load, which makes them good for tests that run on every change.
Once upon a time there was a little town by the sea. The people of the town were fishermen, and every
morning they went out in their boats before the sun came up. In the evening they came home with their nets
full of fish, and the children ran down to the harbour to meet them. The weather was often cold and the
wind was strong, but the houses were warm and the bread was fresh. On Sundays the market opened in the
square, where farmers from the hills sold apples, cheese, honey, eggs and wool.
Hello! How are you today? I am fine, thank you. What is your name? My name is Alice and I live in London.
Where do you work? I work in an office near the river. Do you like your job? Yes, I like it very much,
because my colleagues are kind and the work is interesting. What time is it? It is half past three in the
afternoon. Would you like a cup of tea or coffee? Tea, please, with milk and no sugar.
Computers follow instructions written by people. A program is a list of such instructions, and a
programming language is a way to write them so that both people and machines can read them. Python is a
popular language for data science, machine learning and web services. Numbers, strings, lists and
dictionaries are the basic types. Functions group instructions, classes group data with behaviour, and
modules group both into files. Tests check that the code does what it should, and they catch mistakes
early, before users see them. Good tests are small, quick, independent and easy to read.
Spring, summer, autumn and winter are the four seasons. Monday, Tuesday, Wednesday, Thursday, Friday,
Saturday and Sunday are the days of the week. One, two, three, four, five, six, seven, eight, nine, ten.
Red, orange, yellow, green, blue and purple are colours of the rainbow. The cat sat on the mat, the dog
slept by the fire, and the bird sang in the tree outside the window while the rain fell softly all night.
Scientists study nature through careful observation and experiment. Astronomers measure distant galaxies,
chemists mix elements into compounds, biologists examine cells, and geologists read the history of mountains
in layers of rock. Mathematics gives them a precise vocabulary: equations, probability, geometry, algebra.
Breakfast usually includes porridge, toast, butter, marmalade, orange juice or yoghurt with strawberries.
Travellers carry passports, tickets, luggage and umbrellas; they wait at airports, stations and bridges,
then explore museums, cathedrals, castles, gardens, libraries and theatres in unfamiliar cities.
"""


def build_tokenizer(target: Path):
    """Trains a byte-level BPE (so any text round-trips, no unknown tokens) and saves it as a fast
    tokenizer with bos/eos/pad and the chat template; returns the PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, min_frequency=1, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    # Llama-style: encode() prepends <s> (completions prompts), chat prompts carry it via the template.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=2048, clean_up_tokenization_spaces=False,
                                   chat_template=CHAT_TEMPLATE,
                                   # no token_type_ids: LlamaForCausalLM.generate() rejects them
                                   model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(target, save_jinja_files=False)  # chat_template stays in tokenizer_config.json
    return fast


def build_tiny_llama(target: Path, hidden_size: int = 128) -> Path:
    """A random-weight LlamaForCausalLM (hidden 128, 2 layers, 4 heads x 32, 2 KV heads), float32
    safetensors. head_dim 32 because vLLM's CPU attention kernel rejects 16; float32 because every CPU
    runs it, and with `--dtype float32` vLLM's greedy output then equals transformers' (its default,
    auto, downcasts to bfloat16 for generation and float16 for pooling)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    target = Path(target)
    tokenizer = build_tokenizer(target)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=hidden_size // 32, num_key_value_heads=2,
                         head_dim=32,
                         max_position_embeddings=2048, tie_word_embeddings=False, dtype="float32",
                         **ids)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(target, safe_serialization=True)
    return target


def build_lora(target: Path, base: Path, seed: int, rank: int = 8) -> Path:
    """A rank-8 (``rank``) LoRA on q_proj/v_proj. PEFT initialises B to zero (a no-op adapter), so B is drawn from
    the seed too: adapters with different seeds then give visibly different greedy outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(target, safe_serialization=True)
    return Path(target)


def peft_greedy(base: Path, adapter: Path, prompt: str, max_new_tokens: int) -> str:
    """The reference: a direct PeftModel greedy generate of ``prompt`` (float32), its new text."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    llama = build_tiny_llama(out / "llama")
    build_lora(out / "lora-a", llama, seed=1)
    build_lora(out / "lora-b", llama, seed=2)
    print(out)
