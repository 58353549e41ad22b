"""Run as a script (vLLM engines need a __main__ guard): seeded sampling of a batch whose
prompts exceed one vLLM scheduler step, twice; prints a JSON verdict."""

import json
import sys

if __name__ == "__main__":
    from ray_s3ft.config import load_config
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.tasks.builtin import task_split
    from ray_s3ft.workers.rollout import RolloutWorker
    from ray_s3ft.workers.types import Sampling

    worker = RolloutWorker(resolve_model_path("builtin"), load_config().rollout, 512, 256)
    items = [(e.prompt, 1000 + i) for i, e in enumerate(task_split("train", 64, 0))]
    sampling = Sampling(n=4, temperature=1.0, max_new_tokens=16)
    a, b = (worker.sample(items, sampling).generations for _ in range(2))
    budget = worker.engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    result = {
        "samples": len(a),
        "prompt_tokens": sum(len(g.prompt_ids) for g in a),
        "budget": budget,
        "same": [g.token_ids for g in a] == [g.token_ids for g in b],
    }
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
