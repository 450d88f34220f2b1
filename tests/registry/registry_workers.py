"""Worker for the concurrency test: imported by spawned processes (torch-free on purpose)."""

from __future__ import annotations


def register_many(home: str, artifact: str, name: str, n: int) -> list[int]:
    from slimline.registry import Registry

    reg = Registry(home, timeout=60)
    return [reg.register(artifact, name).version for _ in range(n)]
