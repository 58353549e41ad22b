"""The learner's model: the DeepSpeed engine and the KL reference it builds, and the weights it
hands out (to the rollout engines, the reference, checkpoints), LoRA adapters merged, or the
adapters alone (``engine_adapter``, ``rollout.lora_sync=adapter``).

A mixin of ``LearnerActor`` (``workers/learner.py``): it uses the actor's ``cfg``
(``LearnerConfig``), ``model_cfg``, ``model_path``, ``rank``, ``world_size`` and ``device``.
"""

from __future__ import annotations


class ModelMixin:
    def _build_engine(self) -> int:
        import deepspeed
        import torch

        torch.manual_seed(self.seed)
        ds_config = self._ds_config()
        model = self._load_model(ds_config)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = None
        if not self.cfg.offload_optimizer:  # else DeepSpeed builds its CPU Adam from ds_config
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=optimizer, config=ds_config
        )
        self._init_mode_states()  # StateMixin: Adam's state per mode starts fresh
        return sum(p.numel() for p in params)

    def _ds_config(self) -> dict:
        zero: dict = {"stage": self.cfg.zero_stage}
        if self.cfg.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        config = {
            "train_micro_batch_size_per_gpu": self.cfg.micro_batch_size,
            "gradient_accumulation_steps": 1,  # set per step: SFT and GRPO batches may differ
            "gradient_clipping": self.cfg.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": self.cfg.bf16},
            "zero_allow_untested_optimizer": True,  # torch AdamW: no extension to compile
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.cfg.offload_optimizer:
            config["optimizer"] = {
                "type": "AdamW",
                "params": {"lr": self.lr, "weight_decay": self.weight_decay},
            }
        return config

    def _load_model(self, ds_config: dict):
        import torch
        from transformers import AutoModelForCausalLM

        if self.cfg.zero_stage == 3:
            # ZeRO-3 partitions weights as they load; HfDeepSpeedConfig must exist (and stay
            # referenced) before from_pretrained, or every rank materialises the whole model.
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(
                {**ds_config, "train_batch_size": self.cfg.micro_batch_size * self.world_size}
            )
        dtype = torch.float32 if self.cfg.bf16 else getattr(torch, self.model_cfg.dtype)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=self.model_cfg.trust_remote_code
        )
        lora = self.model_cfg.lora
        if lora.enabled:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
        return model

    def _load_reference(self):
        import torch
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(
            self.model_path,
            dtype=getattr(torch, self.model_cfg.dtype),
            trust_remote_code=self.model_cfg.trust_remote_code,
        ).to(self.device)
        ref.eval().requires_grad_(False)
        return ref

    def full_state_dict(self) -> dict | None:
        """HF-named full weights for inference engines and checkpoints, on rank 0 (None on other
        ranks). Collective under ZeRO-3 (every rank must call it); LoRA adapters are merged."""
        import torch

        with self._gathered(), torch.no_grad():
            return self._hf_state() if self.rank == 0 else None

    def engine_weights(self):
        """``full_state_dict`` packed for the rollout engines (``workers/weights.py``): numpy
        views, one copy into Ray's object store, built by rank 0 alone. Without ZeRO-3 they are
        views of the live parameters, not clones: Ray serialises an actor's return value before
        the actor runs its next call. With LoRA only the adapted layers are new tensors (W +
        delta W); the rest are the frozen base weights, which no step writes. A full clone here
        was a second copy of the model at every sync. Collective under ZeRO-3 (the gathered
        buffers are freed on return: those are copied)."""
        import torch

        from ray_s3ft.workers.weights import pack

        with self._gathered(), torch.no_grad():
            if self.rank != 0:
                return None
            return pack(self._hf_state(copy=self.cfg.zero_stage == 3))

    def engine_adapter(self):
        """The LoRA adapters alone, packed for engines that serve them
        (``rollout.lora_sync=adapter``, ``workers/lora_sync.py``): an ``Adapter`` on rank 0,
        None on the others. Collective under ZeRO-3 (only the adapters are gathered)."""
        import torch

        from ray_s3ft.workers.lora_sync import adapter_state
        from ray_s3ft.workers.weights import Adapter, pack

        with self._gathered(only_lora=True), torch.no_grad():
            if self.rank != 0:
                return None
            dtype = getattr(torch, self.model_cfg.dtype)
            tensors, config = adapter_state(self.engine.module, dtype)
            return Adapter(pack(tensors), config)

    def reset_reference(self) -> None:
        """Make the current policy the KL reference (SASR's post-warm-up reference)."""
        import torch

        with self._gathered(), torch.no_grad():
            # load_state_dict copies into the reference: views, not a full copy first
            self.reference.load_state_dict(self._hf_state(copy=False), strict=True)

    def _gathered(self, only_lora: bool = False):
        """Under ZeRO-3 each rank holds a slice of every weight: gather them (``only_lora``:
        the LoRA adapters' alone) for reading."""
        import contextlib

        if self.cfg.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        named = self.engine.module.named_parameters()
        params = [p for n, p in named if not only_lora or "lora_" in n]
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _hf_state(self, device: str = "cpu", copy: bool = True) -> dict:
        import torch

        module, dtype = self.engine.module, getattr(torch, self.model_cfg.dtype)
        lora = self.model_cfg.lora.enabled
        state = _lora_merged_state(module) if lora else module.state_dict()
        # copy: the result must not alias live parameters the next step overwrites (or gathered
        # ZeRO-3 buffers)
        out = {k: v.detach().to(device, dtype) for k, v in state.items()}
        return {k: v.clone() for k, v in out.items()} if copy else out

    # GPU weight sync (written against vLLM's weight-transfer API; not run on CPU machines):
    # rank 0 joins one NCCL group with every vLLM worker and broadcasts the merged HF weights.

    def nccl_connect(self, master_address: str, master_port: int, num_receivers: int) -> list:
        """Rank 0: join the broadcast group (concurrently with the engines' ``nccl_connect``).
        Returns the tensor metadata the engines need for every later receive."""
        from ray_s3ft.workers.nccl_sync import NCCLWeightSender, tensor_meta

        self._sender = NCCLWeightSender(master_address, master_port, num_receivers)
        self._sender.connect()
        with self._gathered():
            return tensor_meta(list(self._hf_state(device="meta").items()))

    def nccl_broadcast(self) -> None:
        """Send the current weights (concurrently with the engines' ``nccl_update``).
        Collective over the learner ranks under ZeRO-3."""
        import torch

        with self._gathered(), torch.no_grad():
            if self.rank == 0:
                self._sender.send(list(self._hf_state(device=str(self.device)).items()))


def _lora_merged_state(module) -> dict:
    """A PEFT model's weights with its active LoRA adapters merged, under the base model's HF
    names: W + delta(W) for every adapted layer, new tensors; the module is not modified.

    Not ``merge_adapter()``, ``state_dict()``, ``unmerge_adapter()``: the state dict aliases the
    weights that the unmerge restores in place, so what it returned was the base model again (the
    engines, checkpoints and the KL reference got the base weights), and every merge-unmerge
    round trip moves the frozen base weights by a rounding error."""
    from peft.tuners.lora import LoraLayer

    state = _merged_names(module.state_dict())  # the base weights (aliases)
    for name, layer in module.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        weight = state[key]
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        state[key] = weight
    return state


def _merged_names(state: dict) -> dict:
    """PEFT state dict after merge_adapter -> the base model's HF names, adapters dropped."""
    out = {}
    for k, v in state.items():
        if "lora_" in k:
            continue
        k = k.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[k] = v
    return out


def _untie(state: dict) -> dict:
    """safetensors refuses tensors that share memory (tied embeddings): copy the duplicates."""
    seen, out = set(), {}
    for k, v in state.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
