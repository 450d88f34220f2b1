"""Several processes registering at once: no version lost, version numbers unique."""

from __future__ import annotations

import multiprocessing as mp

from registry_workers import register_many

from slimline.registry import Registry


def test_concurrent_writers_lose_nothing(home, lineage_artifacts):
    Registry(home)  # create the schema once; workers race on everything else
    n_proc, per = 4, 5
    ctx = mp.get_context("spawn")
    with ctx.Pool(n_proc) as pool:
        jobs = [
            pool.apply_async(
                register_many, (str(home), str(lineage_artifacts[art].path), "shared", per)
            )
            for art in ("base", "child", "grand", "child")
        ]
        got = [j.get(timeout=120) for j in jobs]
    numbers = sorted(n for g in got for n in g)
    assert numbers == list(range(1, n_proc * per + 1))  # 20 distinct versions, none lost
    reg = Registry(home)
    versions = reg.list("shared")
    assert [v.version for v in versions] == numbers
    assert len(reg.audit(100, action="register")) == n_proc * per
    # Each artifact is stored once however many processes registered it.
    digests = {v.digest for v in versions}
    assert len(digests) == 3 and {d.name for d in reg.store.iterdir()} == digests
    assert all(reg.verify(v.ref).ok for v in versions[:3])
