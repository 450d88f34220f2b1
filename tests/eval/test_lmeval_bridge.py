"""The lm-evaluation-harness bridge: a slimline engine as an lm-eval ``LM`` on a task lm-eval
loads from local files (no network), checked against the same scores computed directly."""

from __future__ import annotations

import json

import pytest
import torch

from slimline.eval import TorchEngine
from slimline.models import tiny_model

pytest.importorskip("lm_eval")

DOCS = [
    {"question": "The capital of France is", "choices": ["Paris", "a banana", "blue"], "label": 0},
    {"question": "Two plus two equals", "choices": ["seven", "four", "green"], "label": 1},
    {"question": "def add(a, b): return", "choices": ["a + b", "class", "import"], "label": 0},
    {"question": "To be or not to", "choices": ["fish", "run", "be"], "label": 2},
]


def _direct_acc(engine: TorchEngine) -> float:
    tok = engine.tokenizer
    right = 0
    for d in DOCS:
        ctx = tok(d["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for c in d["choices"]:
            cont = tok(" " + c, add_special_tokens=False)["input_ids"]
            (lg,) = engine.logits([torch.tensor(ctx + cont)])
            lp = torch.log_softmax(lg[len(ctx) - 1 : -1], -1)
            scores.append(float(lp.gather(-1, torch.tensor(cont)[:, None]).sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == d["label"])
    return right / len(DOCS)


def test_local_task_through_the_bridge(tmp_path, monkeypatch) -> None:
    from slimline.eval.lmeval import lmeval_evaluate

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: slimline_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    engine = TorchEngine(tiny_model("llama", seed=3))
    m = lmeval_evaluate(engine, ["slimline_tiny_mc"], include_path=tmp_path)
    assert m["acc/slimline_tiny_mc"] == pytest.approx(_direct_acc(engine))
    from slimline.errors import ConfigError

    with pytest.raises(ConfigError, match="does not know task"):
        lmeval_evaluate(engine, ["no_such_task_xyz"], include_path=tmp_path)
