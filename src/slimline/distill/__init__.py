"""Distillation: losses, teachers (incl. ensembles and cached outputs), students built from the
teacher, sequence-level data, curriculum, in-loop compression hooks and one Accelerate loop."""

from slimline.distill.config import LOSS_NAMES, DistillConfig
from slimline.distill.hooks import GradualPruning, LoopHook, QuantAwareTraining, sparsity
from slimline.distill.student import (
    StudentCut,
    angular_importance,
    choose_blocks,
    drop_blocks,
    parse_student_spec,
    shrink_mlp,
    student_from_config,
)
from slimline.distill.teachers import (
    CachedTeacher,
    Teacher,
    TeacherOutput,
    cache_teacher,
    fit_temperature,
    same_tokenizer,
)
from slimline.distill.trainer import TrainResult, batch_indices, perplexity, train

__all__ = [
    "LOSS_NAMES",
    "CachedTeacher",
    "DistillConfig",
    "GradualPruning",
    "LoopHook",
    "QuantAwareTraining",
    "StudentCut",
    "Teacher",
    "TeacherOutput",
    "TrainResult",
    "angular_importance",
    "batch_indices",
    "cache_teacher",
    "choose_blocks",
    "drop_blocks",
    "fit_temperature",
    "parse_student_spec",
    "perplexity",
    "same_tokenizer",
    "shrink_mlp",
    "sparsity",
    "student_from_config",
    "train",
]

from slimline.distill.api import DistillResult, build_student, distill, make_data

__all__ += ["DistillResult", "build_student", "distill", "make_data"]
