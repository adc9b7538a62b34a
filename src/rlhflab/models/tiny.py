"""Tiny models with random weights and a character tokenizer, built in-process (no hub, no files).

They exercise exactly the code paths of real models (``from_pretrained``/``save_pretrained``, chat
templates, generation) at a cost of milliseconds, for unit tests and the ``--quick`` demo.
"""

from __future__ import annotations

import string

import torch

# A ChatML-style template, like SmolLM2's, so prompt rendering is tested the same way.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_end|>", "<|im_start|>", "<unk>", "[CLS]", "[SEP]"]


def build_char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: one token per printable ASCII character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<unk>",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_policy(seed: int = 0, hidden_size: int = 64, num_layers: int = 2, tokenizer=None):
    """A 2-layer Llama causal LM (~0.1M parameters) with the character tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def build_tiny_reward_backbone(seed: int = 0, hidden_size: int = 64, num_layers: int = 2, tokenizer=None):
    """A 2-layer BERT encoder (random weights) with the character tokenizer: an encoder backbone
    for reward-model tests, standing in for MiniLM."""
    from transformers import BertConfig, BertModel

    tokenizer = tokenizer or build_char_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    return model, tokenizer
