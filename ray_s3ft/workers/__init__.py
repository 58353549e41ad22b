"""Ray actors: rollout (vLLM), judge and learner (DeepSpeed) workers, their weight sync, and
the data that crosses to them (``types``, ``batches``)."""
