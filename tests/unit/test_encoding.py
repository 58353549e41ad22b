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


# "x" renders as <|user|> \n x \n <|assistant|> \n: 6 tokens; "The answer is 7." is
# The / answer / is / 7 / . : 5 tokens, 6 with <|end|>; the whole row 12
PROMPT, RESPONSE = "x", "The answer is 7."


def test_a_row_that_fits_keeps_every_token(tokenizer):
    ids, attn, mask = encode_sft(tokenizer, [PROMPT], [RESPONSE], 12)
    assert ids.shape == (1, 12) and int(attn.sum()) == 12
    assert mask[0].tolist() == [0.0] * 6 + [1.0] * 6
    assert tokenizer.decode(ids[0][:6]) == render_prompt(tokenizer, PROMPT)  # header intact


@pytest.mark.parametrize("max_len", [11, 6, 4])
def test_a_row_too_long_is_refused_never_cut(tokenizer, max_len):
    # 11: the old code cut the prompt's <|user|> header off; 6 and 4: the whole prompt went,
    # and at 4 the row was still 6 tokens, longer than max_len
    with pytest.raises(ValueError, match=rf"prompt 6 \+ response 6 tokens .* > {max_len};"):
        encode_sft(tokenizer, [PROMPT, "y"], [RESPONSE, "z"], max_len)


def test_mismatched_lengths_rejected(tokenizer):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        encode_sft(tokenizer, ["a", "b"], ["c"], 16)
