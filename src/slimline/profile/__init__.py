"""Static cost (parameters, stored bytes, FLOPs) and runtime cost on an engine (latency, memory,
per-module time, energy) of a model: ``profile(model) -> Profile``."""

from slimline.profile.api import ENGINE, Profile, profile, profile_paired
from slimline.profile.runtime import (
    Energy,
    decode_breakdown,
    machine,
    module_breakdown,
    module_roles,
)
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
    "decode_breakdown",
    "flops_per_token",
    "linear_io",
    "machine",
    "module_breakdown",
    "module_roles",
    "param_stats",
    "profile",
    "profile_paired",
    "size_on_disk",
]
