"""Ray actors: rollout (vLLM), judge and learner (DeepSpeed) workers, and their weight sync."""
