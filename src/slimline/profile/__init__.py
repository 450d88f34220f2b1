"""Static cost (parameters, stored bytes, FLOPs) and runtime cost on an engine (latency, memory,
per-module time, energy) of a model: ``profile(model) -> Profile``."""

from slimline.profile.api import ENGINE, Profile, profile
from slimline.profile.runtime import Energy, machine, module_breakdown, module_roles
from slimline.profile.static import (
    ParamStats,
    flops_per_token,
    linear_io,
    param_stats,
    size_on_disk,
)

__all__ = [
    "ENGINE",
    "Energy",
    "ParamStats",
    "Profile",
    "flops_per_token",
    "linear_io",
    "machine",
    "module_breakdown",
    "module_roles",
    "param_stats",
    "profile",
    "size_on_disk",
]
