"""Prompt/response encoding: the loss covers exactly the response and its end-of-turn token."""

import pytest

from ray_s3ft.model.encoding import encode_sft, render_prompt
from ray_s3ft.model.paths import resolve_model_path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path("builtin"))


def test_chat_template(tokenizer):
    assert render_prompt(tokenizer, "Hi 12") == "<|user|>\nHi 12\n<|assistant|>\n"


def test_loss_mask_is_the_response(tokenizer):
    ids, attn, mask = encode_sft(
        tokenizer, ["Which number is larger, 12 or 7?", "x"], ["12", "y z"], 64
    )
    assert ids.shape == attn.shape == mask.shape
    for row in range(2):
        n = int(attn[row].sum())
        resp = tokenizer.decode(ids[row][mask[row] == 1])
        assert resp == ["12", "y z"][row] + "<|end|>"
        # response tokens are the last ones of the row, padding after them
        assert mask[row, :n].tolist()[-int(mask[row].sum()) :] == [1.0] * int(mask[row].sum())
        assert mask[row, n:].sum() == 0 and (ids[row, n:] == tokenizer.pad_token_id).all()


def test_long_prompt_is_cut_from_the_left_never_the_response(tokenizer):
    ids, attn, mask = encode_sft(tokenizer, ["word " * 200], ["The answer is 7."], 40)
    assert ids.shape[1] == 40
    assert tokenizer.decode(ids[0][mask[0] == 1]) == "The answer is 7.<|end|>"


def test_mismatched_lengths_rejected(tokenizer):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        encode_sft(tokenizer, ["a", "b"], ["c"], 16)
