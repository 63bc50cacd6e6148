"""Shared fixtures: paths to the golden reference data copied from ../shared/reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "reference"

# pytest-xdist runs the suite in several processes (most of the end-to-end tests wait on real
# faults: a heartbeat TTL, Redis held down); the CPU-bound tests in each share the cores.
_TEST_PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _TEST_PROCESSES > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _TEST_PROCESSES))


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: at least three processes even on two cores (the fault tests mostly wait), at
    most six (each starts its own API, workers and Redis servers)."""
    return max(3, min(6, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


def load_reference(name: str):
    path = REFERENCE / name
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return torch.load(path, weights_only=True)


def golden_tiny_unet():
    """The reference's tiny UNet with its weights (tests/data/reference/tiny_unet_A.*), in eval mode."""
    import models
    from models.checkpoints import load_weights

    net = models.build_unet(load_reference("tiny_unet_A.json")["official_conf_keys"])
    load_weights(net, load_reference("tiny_unet_A.pt"))
    return net.eval()


@pytest.fixture(scope="session")
def redis_server():
    """One private redis-server for the session; tests that kill Redis start their own."""
    from tests.procs import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture()
def redis_db(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.flushall()


def png_bytes(img) -> bytes:
    import io

    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def face_and_mask(size: int = 32, seed: int = 0):
    """A random RGB image and a mask whose centre square is white (to fill)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy(), "RGB")
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image, mask
