"""The one interface every evaluation task reads a model through: logits of token windows and
greedy generations. Tasks never touch ``nn.Module``s, so the same suite can judge a model on the
engine it is served with (torch today; llama.cpp / ONNX Runtime when those engines give logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from slimline.errors import ConfigError
from slimline.models.kv import with_cache


@runtime_checkable
class LogitsEngine(Protocol):
    """What a task needs from a model. ``windows`` are 1-D token-id tensors of any lengths;
    ``logits`` returns one float32 ``[T, V]`` tensor per window (position t predicts t+1).
    ``generate`` returns at most ``n`` greedily chosen new ids after ``prompt_ids`` (1-D)."""

    name: str
    tokenizer: Any
    max_length: int | None

    def logits(self, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...

    def generate(self, prompt_ids: torch.Tensor, n: int) -> torch.Tensor: ...


def model_window(config: Any) -> int | None:
    """The longest context a model was built for (``None`` when its config does not say)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class TorchEngine:
    """A ``LoadedModel`` run by torch, optionally serving its KV cache quantized.

    With ``kv_bits`` set, every window is prefilled in chunks of ``chunk`` tokens through a
    ``QuantizedKVCache``: each chunk attends to the earlier ones through the quantized cache, as a
    server that prefills in chunks and then decodes would. A window that fits one chunk is exact,
    so short-context metrics cannot see cache quantization; long-context tasks can.
    """

    def __init__(
        self,
        lm: Any,
        *,
        kv_bits: int | None = None,
        kv_group_size: int | None = None,
        chunk: int = 512,
        batch_tokens: int = 2048,
        name: str | None = None,
    ):
        if lm.kind != "causal-lm":
            raise ConfigError(
                f"a logits engine needs a causal LM, {lm.source} is an {lm.kind}",
                "evaluate encoders with the encoder tasks (suite 'encoder')",
            )
        if chunk < 1 or batch_tokens < 1:
            raise ConfigError("chunk and batch_tokens must be positive", "e.g. chunk=512")
        self.lm = lm
        self.model = lm.model
        self.tokenizer = lm.tokenizer
        self.kv_bits = kv_bits
        self.kv_group_size = kv_group_size
        self.chunk = chunk
        self.batch_tokens = batch_tokens
        self.max_length = model_window(lm.model.config)
        suffix = f"+kv{kv_bits}" if kv_bits else ""
        self.name = name or f"{lm.source}{suffix}"
        self._device = next(lm.model.parameters()).device

    def _cache(self) -> Any:
        from transformers.cache_utils import DynamicCache

        from slimline.quant.kvcache import QuantizedKVCache

        cfg = self.model.config
        if self.kv_bits is None:
            return DynamicCache(config=cfg)
        return QuantizedKVCache(cfg, bits=self.kv_bits, group_size=self.kv_group_size)

    def _chunked(self, ids: torch.Tensor) -> torch.Tensor:
        cache = self._cache()
        out = [
            self.model(
                input_ids=ids[None, s : s + self.chunk].to(self._device),
                **with_cache(self.model, cache),
                use_cache=True,
            ).logits[0]
            for s in range(0, ids.shape[0], self.chunk)
        ]
        return torch.cat(out).float().cpu()

    @torch.inference_mode()
    def logits(self, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Float32 logits ``[T, V]`` of each window (right-padded batches: causal attention
        never lets a real position see the padding after it)."""
        ws = [torch.as_tensor(w).long().reshape(-1) for w in windows]
        if any(w.numel() == 0 for w in ws):
            raise ConfigError("an evaluation window has no tokens", "drop empty windows")
        out: list[torch.Tensor | None] = [None] * len(ws)
        if self.kv_bits is not None:
            for i, w in enumerate(ws):
                out[i] = self._chunked(w)
            return out  # type: ignore[return-value]
        order = sorted(range(len(ws)), key=lambda i: -ws[i].numel())
        i = 0
        while i < len(order):
            T = ws[order[i]].numel()
            B = max(1, self.batch_tokens // T)
            group = order[i : i + B]
            batch = torch.zeros(len(group), T, dtype=torch.long)
            for r, j in enumerate(group):
                batch[r, : ws[j].numel()] = ws[j]
            lg = self.model(input_ids=batch.to(self._device), use_cache=False).logits
            for r, j in enumerate(group):
                out[j] = lg[r, : ws[j].numel()].float().cpu()
            i += B
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor, n: int) -> torch.Tensor:
        """Greedy decoding of at most ``n`` tokens with the (possibly quantized) KV cache; stops
        at the tokenizer's end-of-sequence token."""
        ids = torch.as_tensor(prompt_ids).long().reshape(-1)
        cache = self._cache()
        eos = getattr(self.tokenizer, "eos_token_id", None)
        last = None
        for s in range(0, ids.shape[0], self.chunk):
            last = self.model(
                input_ids=ids[None, s : s + self.chunk].to(self._device),
                **with_cache(self.model, cache),
                use_cache=True,
                logits_to_keep=1,
            ).logits[0, -1]
        new: list[int] = []
        while last is not None and len(new) < n:
            tok = int(last.argmax())
            if tok == eos:
                break
            new.append(tok)
            if len(new) == n:
                break
            last = self.model(
                input_ids=torch.tensor([[tok]], device=self._device),
                **with_cache(self.model, cache),
                use_cache=True,
            ).logits[0, -1]
        return torch.tensor(new, dtype=torch.long)


def as_engine(model: Any, **kwargs: Any) -> LogitsEngine:
    """An engine for ``model``: an engine as it is, a ``LoadedModel`` through ``TorchEngine``."""
    if isinstance(model, LogitsEngine):
        return model
    return TorchEngine(model, **kwargs)


class ServedEngine:
    """A model in a serving engine (``slimline.engines``: llama.cpp, ONNX Runtime) as a
    ``LogitsEngine``, so a suite judges the file users will run, not its torch original.

    Windows longer than the engine's context are refused by the tasks' own length check
    (``max_length``), with the reason stated.
    """

    def __init__(self, engine: Any, tokenizer: Any, name: str | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_length: int | None = getattr(engine, "n_ctx", None)
        d = engine.describe()
        self.name = name or f"{d['engine']} {d['version']}"

    def logits(self, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        ws = [torch.as_tensor(w).long().reshape(-1) for w in windows]
        if any(w.numel() == 0 for w in ws):
            raise ConfigError("an evaluation window has no tokens", "drop empty windows")
        return [self.engine.window_logits(w.tolist()) for w in ws]

    def generate(self, prompt_ids: torch.Tensor, n: int) -> torch.Tensor:
        """Greedy, at most ``n`` new ids, stopping at the end-of-sequence token like torch's."""
        if n < 1:
            return torch.zeros(0, dtype=torch.long)
        ids = self.engine.generate(torch.as_tensor(prompt_ids).reshape(-1).tolist(), n)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return torch.tensor(ids, dtype=torch.long)
