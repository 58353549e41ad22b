"""The ``hf`` generation backend (``workers.engines.HFEngine``) samples as vLLM does: with the
parameters it is given, not with processors from the model's ``generation_config.json``."""

import json
import shutil

from ray_s3ft.config import RolloutConfig
from ray_s3ft.model.encoding import load_tokenizer
from ray_s3ft.model.paths import resolve_model_path
from ray_s3ft.workers.engines import HFEngine, encode_prompts
from ray_s3ft.workers.types import Sampling


def test_a_generation_config_repetition_penalty_is_not_applied(tmp_path):
    builtin = resolve_model_path("builtin")
    penalized = tmp_path / "penalized"
    shutil.copytree(builtin, penalized)
    gen = json.loads((penalized / "generation_config.json").read_text())
    gen.update(repetition_penalty=5.0, no_repeat_ngram_size=2)  # what vLLM would not apply
    (penalized / "generation_config.json").write_text(json.dumps(gen))

    tok = load_tokenizer(builtin, False)
    ids = encode_prompts(tok, ["Tom has 5 apples and buys 2 more. How many?"], 256)
    greedy = Sampling(temperature=0.0, max_new_tokens=24)
    cfg = RolloutConfig(backend="hf", temperature=0.0)
    plain = HFEngine(builtin, cfg, 512, False, False).generate(ids, greedy, tok, None)
    other = HFEngine(str(penalized), cfg, 512, False, False).generate(ids, greedy, tok, None)
    # the answer repeats tokens and bigrams (" 2", "13"): a penalty would change it
    assert plain[0].text == "2. 2 + 2 = 13. 13 + 1 = 14. The answer is 14."
    assert [g.token_ids for g in other] == [g.token_ids for g in plain]
    assert [g.logprobs for g in other] == [g.logprobs for g in plain]
