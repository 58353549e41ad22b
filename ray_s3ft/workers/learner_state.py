"""The learner's state beyond the weights: Adam's state per mode (``learner.optimizer_state:
per_mode``), and a checkpoint's save and load (DeepSpeed state, RNG, the reference, the
HF-format model and the LoRA adapters).

A mixin of ``LearnerActor`` (``workers/learner.py``), beside ``ModelMixin``.
"""

from __future__ import annotations

from pathlib import Path

from ray_s3ft.workers.learner_model import _untie


class StateMixin:
    def _init_mode_states(self) -> None:
        """learner.optimizer_state per_mode: the mode whose Adam state the optimizer holds, the
        other modes' states, and the state a mode's first step starts from."""
        self.opt_mode: str | None = None
        self.opt_states: dict = {}
        self.fresh_opt_state = (  # not held otherwise: a bf16 ZeRO-0 one is a full copy
            _copy_state(self._base_optimizer().state)
            if self.cfg.optimizer_state == "per_mode"
            else None
        )

    def _base_optimizer(self):
        """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16): it holds Adam's state,
        keyed by the parameters it updates (ZeRO: the flat fp32 partitions)."""
        opt = self.engine.optimizer
        while hasattr(opt, "optimizer"):
            opt = opt.optimizer
        return opt

    def _use_optimizer_state(self, mode: str) -> None:
        """``learner.optimizer_state: per_mode``: give the optimizer ``mode``'s Adam state (its
        moments and step count) and keep the other mode's aside. A mode's first step starts
        from the state DeepSpeed built the optimizer with. (DeepSpeed's own optimizer-state
        accessors, ``safe_get_full_optimizer_state`` and universal checkpoints, link to the
        state of the first mode that stepped; nothing here uses them.)"""
        if self.cfg.optimizer_state != "per_mode" or self.opt_mode == mode:
            return
        opt = self._base_optimizer()
        if self.opt_mode is not None:  # before the first step the optimizer holds a fresh one
            self.opt_states[self.opt_mode] = opt.state
            held = self.opt_states.pop(mode, None)
            opt.state = held if held is not None else _copy_state(self.fresh_opt_state)
        self.opt_mode = mode

    def _state_keys(self) -> list:
        """The tensors that key the base optimizer's state, in an order every process built
        from the same config shares: a checkpoint keys the other modes' states by position
        here. ZeRO-3 keeps its param groups empty but inside its step, where it puts in one
        sub-group's flat fp32 partition at a time (``_optimizer_step`` in DeepSpeed's
        ``stage3.py``): there the keys are those partitions, in sub-group order."""
        if self.cfg.zero_stage == 3:
            return list(self.engine.optimizer.fp32_partitioned_groups_flat)
        return [p for g in self._base_optimizer().param_groups for p in g["params"]]

    def _mode_states(self) -> dict:
        """The per-mode bookkeeping for a checkpoint: which mode's state the optimizer holds
        (DeepSpeed saves that one) and the others, keyed by position in ``_state_keys``."""
        index = {id(p): i for i, p in enumerate(self._state_keys())}
        return {
            "active": self.opt_mode,
            "inactive": {
                m: {index[id(p)]: dict(s) for p, s in st.items()}
                for m, st in self.opt_states.items()
            },
        }

    def _load_mode_states(self, saved: dict) -> None:
        from collections import defaultdict

        keys = self._state_keys()
        self.opt_mode = saved["active"]
        self.opt_states = {
            m: defaultdict(dict, {keys[int(i)]: s for i, s in st.items()})
            for m, st in saved["inactive"].items()
        }

    def save(self, ckpt_dir: str, hf_dir: str | None) -> None:
        """DeepSpeed state (optimizer included) of every rank under ``ckpt_dir``, the HF-format
        model under ``hf_dir`` (rank 0) and the reference weights. Collective. With LoRA the
        model in ``hf_dir`` has the adapters merged, and the adapters alone go next to it, in
        PEFT's format (``hf_dir/../adapter``: ``PeftModel.from_pretrained(base, that)``)."""
        import torch
        from safetensors.torch import save_file

        self.engine.save_checkpoint(ckpt_dir, tag="state")
        torch.save(_rng_state(), Path(ckpt_dir) / f"rng_rank{self.rank}.pt")
        if self.cfg.optimizer_state == "per_mode":  # DeepSpeed saved the active mode's state
            torch.save(self._mode_states(), Path(ckpt_dir) / f"optimizer_modes_rank{self.rank}.pt")
        sd = self.full_state_dict()
        lora = self.model_cfg.lora.enabled
        if lora and hf_dir is not None:
            with self._gathered(), torch.no_grad():  # collective under ZeRO-3
                if self.rank == 0:
                    self.engine.module.save_pretrained(str(Path(hf_dir).parent / "adapter"))
        if self.rank == 0:
            if hf_dir is not None:
                from transformers import AutoTokenizer

                base = self.engine.module
                base = base.get_base_model() if lora else base
                base.save_pretrained(hf_dir, state_dict=sd)
                AutoTokenizer.from_pretrained(self.model_path).save_pretrained(hf_dir)
            ref = {k: v.contiguous() for k, v in self.reference.state_dict().items()}
            save_file(_untie(ref), str(Path(ckpt_dir) / "reference.safetensors"))

    def load(self, ckpt_dir: str) -> None:
        import torch
        from safetensors.torch import load_file

        modes = Path(ckpt_dir) / f"optimizer_modes_rank{self.rank}.pt"
        per_mode = self.cfg.optimizer_state == "per_mode"
        if modes.is_file() != per_mode:
            held = "one Adam state per mode" if modes.is_file() else "one shared Adam state"
            raise RuntimeError(
                f"{ckpt_dir} holds {held}, but learner.optimizer_state="
                f"{self.cfg.optimizer_state}: resume with the setting it was saved with, or "
                "start a new run"
            )
        self.engine.load_checkpoint(ckpt_dir, tag="state")
        if per_mode:
            self._load_mode_states(torch.load(modes, weights_only=True))
        rng = Path(ckpt_dir) / f"rng_rank{self.rank}.pt"
        if rng.is_file():  # dropout (LoRA) draws continue where the saved run stopped
            state = torch.load(rng, weights_only=True)
            torch.set_rng_state(state["cpu"])
            if state.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
        ref = load_file(str(Path(ckpt_dir) / "reference.safetensors"))
        self.reference.load_state_dict(ref, strict=False)


def _copy_state(state) -> dict:
    """A copy of a torch optimizer's ``state`` (param -> {name: value}) under the same keys."""
    from collections import defaultdict

    import torch

    return defaultdict(
        dict,
        {
            p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in state.items()
        },
    )


def _rng_state() -> dict:
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}
