"""The reference engine: the model in eager PyTorch, as every other number is compared to."""

from __future__ import annotations

from typing import Any

import torch

from slimline.engines.base import Engine
from slimline.errors import ConfigError
from slimline.profile._resolve import resolve
from slimline.profile.runtime import greedy_decode, torch_threads


class TorchEngine(Engine):
    """A causal LM in eager PyTorch (``torch.set_num_threads(threads)`` while it runs)."""

    name = "torch"

    def __init__(self, model: Any, threads: int = 2, tokenizer: Any = None):
        super().__init__(threads)
        self.lm = resolve(model, tokenizer)
        if self.lm.kind != "causal-lm":
            raise ConfigError(
                f"the engine interface runs causal LMs; {self.lm.source} is an {self.lm.kind}",
                "profile encoders with slimline profile (torch)",
            )
        self.model = self.lm.model.eval()

    @property
    def version(self) -> str:
        return torch.__version__

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    @torch.inference_mode()
    def window_logits(self, ids: list[int]) -> torch.Tensor:
        with torch_threads(self.threads):
            x = torch.tensor([ids])
            return self.model(input_ids=x, use_cache=False).logits[0].float()

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> None:
        with torch_threads(self.threads):
            self.model(input_ids=torch.tensor([ids]), use_cache=True)

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        with torch_threads(self.threads):
            t_prompt, t_steps, ids = greedy_decode(self.model, torch.tensor([prompt]), new_tokens)
        return t_prompt, t_steps, ids[0].tolist()

    def bytes_per_token(self) -> int:
        from slimline.engines.bound import model_bytes_per_token

        return model_bytes_per_token(self.model)
