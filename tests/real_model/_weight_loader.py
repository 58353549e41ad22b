"""Run as a script (vLLM engines need a __main__ guard): one vLLM engine of SmolLM2 loads the
same perturbed weights through the name map and through vLLM's ``reload_weights``, and greedy
decodes after each; transformers decodes the same weights. Prints nothing; writes JSON."""

import json
import sys

if __name__ == "__main__":
    import torch
    from transformers import AutoModelForCausalLM

    from ray_s3ft.config import load_config
    from ray_s3ft.workers.rollout import RolloutWorker
    from ray_s3ft.workers.types import Sampling
    from ray_s3ft.workers.weights import pack

    path, out = sys.argv[1], sys.argv[2]
    worker = RolloutWorker(path, load_config().rollout, 512, 256)
    engine = worker.engine
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    state = {k: v + 0.02 * torch.randn_like(v) for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied, as the learner sends
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13]]
    greedy = Sampling(temperature=0.0, max_new_tokens=12)

    def decode():
        gens = engine.generate(prompts, greedy, worker.tokenizer, None)
        return [[g.token_ids for g in gens], [g.logprobs for g in gens]]

    result = {"base": decode()}
    # name map first (a fresh engine: nothing of a reload's processing to lean on), twice
    # (the second through the plan built by the first), then the reload, then the name map
    # after other weights, back to these
    for i, how in enumerate(["name_map", "name_map", "vllm_reload", "name_map"]):
        engine.weight_loader = how
        if i == 3:
            worker.update_weights(i, pack(dict(hf.state_dict())))
        worker.update_weights(i + 1, pack(state))  # numpy views, as from Ray's object store
        result[f"{i}:{how}"] = decode() + [engine.loaded_by == "vllm_reload"]  # fell back
    hf.load_state_dict(state)
    with torch.no_grad():
        result["transformers"] = [
            hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)[0, len(p) :].tolist()
            for p in prompts
        ]
    with open(out, "w") as f:
        json.dump(result, f)
