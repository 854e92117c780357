"""Batched generation for any HF causal LM, with LongBench-style middle truncation of over-long prompts.

A prompt is a string (one user turn) or a list of chat messages. A list that ends with an assistant
message is *continued* (the model writes after that prefix), which is how the needle test primes
"Here is the most relevant sentence in the context:". Prompts longer than the input budget lose
their middle, as LongBench's ``pred.py`` does: the first and last halves of the longest user message
are kept so that the chat template (and the question at the end) survives; the token ids are cut
only when that is not enough (or when ``chat=False``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

Prompt = str | list[dict[str, str]]


def truncate_middle(ids: Sequence[int], max_tokens: int) -> list[int]:
    """Keep the first ``max_tokens // 2`` and the last ``max_tokens - max_tokens // 2`` ids."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    ids = list(ids)
    if len(ids) <= max_tokens:
        return ids
    head = max_tokens // 2
    tail = max_tokens - head
    return ids[:head] + (ids[len(ids) - tail:] if tail else [])


def context_window(model) -> int | None:
    """The model's context length from its config (Llama/Mistral/Qwen or ChatGLM naming), or None."""
    config = model.config
    for attr in ("max_position_embeddings", "seq_length", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _as_messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        raise ValueError(f"a chat prompt must be a non-empty list of {{'role', 'content'}} dicts, got {prompt!r:.200}")
    return [dict(m) for m in prompt]


def _template_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    # A trailing assistant message is a response prefix for the model to continue.
    prefix = messages[-1]["role"] == "assistant"
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not prefix, continue_final_message=prefix
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, prompt: Prompt, max_input_tokens: int | None, chat: bool = True) -> list[int]:
    """Token ids of one prompt (chat-templated when ``chat``), middle-truncated to ``max_input_tokens``."""
    if not chat:
        if not isinstance(prompt, str):
            raise ValueError("chat=False needs string prompts")
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return ids if max_input_tokens is None else truncate_middle(ids, max_input_tokens)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', 'tokenizer')} has no chat template: pass chat=False")
    messages = _as_messages(prompt)
    ids = _template_ids(tokenizer, messages)
    if max_input_tokens is None or len(ids) <= max_input_tokens:
        return ids
    # Cut the middle of the longest user message (the document), keeping template and question intact.
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if users:
        i = max(users, key=lambda j: len(messages[j]["content"]))
        content = tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"]
        keep = max(len(content) - (len(ids) - max_input_tokens), 0)
        messages[i]["content"] = tokenizer.decode(truncate_middle(content, keep), skip_special_tokens=True)
        ids = _template_ids(tokenizer, messages)
    # Re-tokenising the cut text can shift a few tokens across the seam; the id cut guarantees the budget.
    return truncate_middle(ids, max_input_tokens)


def _eos_ids(model, tokenizer) -> list[int] | None:
    # Chat models often stop on several ids (ChatGLM3: </s>, <|user|>, <|observation|>): keep the model's and the tokenizer's.
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids or None


def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
    return input_ids, mask


def _input_budget(model, max_new_tokens: int, max_input_tokens: int | None) -> int | None:
    window = context_window(model)
    if window is not None:
        room = window - max_new_tokens
        if room <= 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room in the {window}-token context window")
        max_input_tokens = room if max_input_tokens is None else min(max_input_tokens, room)
    return max_input_tokens


@torch.no_grad()
def _generate_batch(model, tokenizer, batch: list[list[int]], gen_kwargs: dict) -> list[str]:
    input_ids, mask = _left_pad(batch, _pad_id(tokenizer))
    device = next(model.parameters()).device
    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
    new_tokens = out[:, input_ids.shape[1]:].cpu()
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]


def generate(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int = 128,
             max_input_tokens: int | None = None, batch_size: int = 1, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0, chat: bool = True, progress: bool = True) -> list[str]:
    """Generate one completion per prompt (greedy or seeded sampling), in the prompts' order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budget = _input_budget(model, max_new_tokens, max_input_tokens)
    encoded = [encode_prompt(tokenizer, p, budget, chat) for p in prompts]
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=_pad_id(tokenizer),
        eos_token_id=_eos_ids(model, tokenizer), use_cache=True,
        **({"temperature": temperature, "top_p": 1.0, "top_k": 0} if do_sample else {"temperature": None, "top_p": None, "top_k": None}),
    )
    # Longest first, so each batch pads little and an out-of-memory shows up at the start.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) <= 1):
        idx = order[start:start + batch_size]
        torch.manual_seed(seed + start)  # same prompts + seed -> same samples
        for i, text in zip(idx, _generate_batch(model, tokenizer, [encoded[i] for i in idx], gen_kwargs)):
            outputs[i] = text
    model.train(was_training)
    return outputs
