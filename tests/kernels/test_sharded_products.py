"""Edges sharded over devices (``products="sharded"``): the attribution equals one device's within float
rounding, each product is one reduction over the mesh, each device holds a contiguous range of attenders, and the
compiler's memory plan of a sharded attribution is a device's share of the whole.

Run in a child process on four CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``): the flag only
takes effect before JAX starts, and this process's JAX has one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, re
import numpy as np, jax, jax.numpy as jnp
from kernels import attribute, heavy_tailed_population
from kernels.graph import resolve_products
from kernels.memory import plan

out = {"devices": jax.device_count(), "auto": resolve_products("auto", 10**8)}
pop = heavy_tailed_population(6000, 8, seed=3)
for ind in ("cascade", "reach", "saturation", "exposure"):
    for dtype in ("float32", "float64"):
        one = attribute(ind, pop.x, pop.graph, nodes=16, dtype=dtype, products="xla")
        many = attribute(ind, pop.x, pop.graph, nodes=16, dtype=dtype, products="sharded")
        scale = float(np.max(np.abs(one.phi)))
        out[f"{ind}/{dtype}"] = {
            "products": many.products,
            "phi": float(np.max(np.abs(one.phi - many.phi))) / scale,
            "value": abs(one.value - many.value) / abs(one.value),
            "devices": [one.device, many.device],
        }
g = pop.graph.padded(np.float32, "sharded")
x = jnp.ones(g.size, jnp.float32)
for name in ("exposure", "transpose"):
    text = jax.jit(lambda v, g, name=name: getattr(g, name)(v)).lower(x, g).compile().as_text()
    ops = ("all-reduce", "all-gather", "all-to-all")
    out[name] = {op: len(re.findall(rf"\b{op}(?:-start)?\(", text)) for op in ops}
pieces = sorted(g.attender.addressable_shards, key=lambda s: s.index[0].start)
ranges = [(int(np.min(np.asarray(s.data))), int(np.max(np.asarray(s.data))), int(s.data.shape[0])) for s in pieces]
out["pieces"] = ranges
out["edges_padded"] = int(g.attender.shape[0])
for d in (1, 4):
    p = plan(200_000, 1_600_000, devices=d, chunk=4)
    out[f"plan{d}"] = {"arguments": p.arguments, "temporaries": p.temporaries, "total": p.total}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_devices() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    env.pop("SKYATTR_KERNEL_PRODUCTS", None)
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_sharded_attribution_equals_one_devices(four_devices: dict) -> None:
    assert four_devices["devices"] == 4
    for key in ("cascade", "reach", "saturation", "exposure"):
        for dtype, tol in (("float32", 5e-5), ("float64", 1e-12)):
            got = four_devices[f"{key}/{dtype}"]
            assert got["products"] == "sharded"
            assert got["devices"] == ["cpu:0", "cpu:0-3"], "the result names the devices it ran on"
            assert got["phi"] < tol and got["value"] < tol, (key, dtype, got)


def test_each_product_is_one_reduction_over_the_mesh(four_devices: dict) -> None:
    for name in ("exposure", "transpose"):
        assert four_devices[name] == {"all-reduce": 1, "all-gather": 0, "all-to-all": 0}, name


def test_each_device_holds_a_contiguous_range_of_attenders(four_devices: dict) -> None:
    pieces = four_devices["pieces"]
    assert len(pieces) == 4 and sum(size for _, _, size in pieces) == four_devices["edges_padded"]
    assert len({size for _, _, size in pieces}) == 1
    assert all(pieces[k][1] <= pieces[k + 1][0] for k in range(3)), pieces  # sorted by attender, cut in order


def test_a_cpu_with_several_devices_keeps_its_host_products(four_devices: dict) -> None:
    assert four_devices["auto"] == "host"


def test_the_memory_plan_of_a_sharded_attribution_is_a_devices_share(four_devices: dict) -> None:
    one, four = four_devices["plan1"], four_devices["plan4"]
    # the edges (12 bytes each, 1.6*10^6 padded to a bucket) are cut in four; the agent vectors are not
    edge_bytes = 12 * 1_600_000
    assert one["arguments"] - four["arguments"] > 0.7 * edge_bytes
    assert four["temporaries"] < 0.6 * one["temporaries"]
    assert four["total"] < 0.6 * one["total"]
