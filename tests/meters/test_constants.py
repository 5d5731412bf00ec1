"""One module of constants, each with its source beside it, and equal to what it cites."""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest
from ecologits.impacts import llm as ecologits_llm
from ecologits.tracers.utils import PROVIDER_CONFIG_MAP

from meters import constants
from meters.constants import UnknownAccelerator, accelerator

SOURCE = Path(constants.__file__).read_text()


def test_every_constant_has_a_comment_beside_it() -> None:
    lines = SOURCE.splitlines()
    tree = ast.parse(SOURCE)
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            name = getattr(target, "id", "")
            if not name.isupper() or name.startswith("_") or name == "__all__":
                continue
            # the comment block above it, or above the run of assignments it belongs to
            i = node.lineno - 2
            while i >= 0 and re.match(r"^[A-Z_][A-Z0-9_]* = ", lines[i]):
                i -= 1
            assert lines[i].strip().startswith("#") or "#" in lines[node.lineno - 1], name


def test_the_ecologits_constants_are_ecologits_own() -> None:
    assert constants.GPU_ENERGY_A_WH == ecologits_llm.GPU_ENERGY_ALPHA
    assert constants.GPU_ENERGY_B == ecologits_llm.GPU_ENERGY_BETA
    assert constants.GPU_ENERGY_C_WH == ecologits_llm.GPU_ENERGY_GAMMA
    assert constants.LATENCY_A_S == ecologits_llm.LATENCY_ALPHA
    assert constants.LATENCY_B_S == ecologits_llm.LATENCY_BETA
    assert constants.LATENCY_C_S == ecologits_llm.LATENCY_GAMMA
    assert constants.DEFAULT_BATCH_SIZE == ecologits_llm.BATCH_SIZE
    assert constants.BYTES_PER_PARAMETER * 8 == ecologits_llm.MODEL_QUANTIZATION_BITS
    assert constants.DEFAULT_SERVER_POWER_W_PER_GPU * ecologits_llm.SERVER_GPUS == (
        ecologits_llm.SERVER_POWER * 1000
    )
    assert constants.SERVER_EMBODIED_KGCO2E == ecologits_llm.SERVER_EMBODIED_IMPACT_GWP
    assert constants.GPU_EMBODIED_KGCO2E == ecologits_llm.GPU_EMBODIED_IMPACT_GWP
    assert constants.SERVER_GPUS == ecologits_llm.SERVER_GPUS
    assert constants.HARDWARE_LIFETIME_S == ecologits_llm.HARDWARE_LIFESPAN
    openai = PROVIDER_CONFIG_MAP["openai"]
    assert (
        openai.datacenter_pue,
        openai.datacenter_wue,
    ) == (constants.DEFAULT_PUE, constants.DEFAULT_WUE_L_PER_KWH)
    # EcoLogits divides by 80 GB, an H100's: the default accelerator's datasheet memory.
    assert accelerator(constants.DEFAULT_ACCELERATOR).memory_gb == ecologits_llm.GPU_MEMORY


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("H100", "H100-SXM"),
        ("nvidia h100-sxm5-80gb", "H100-SXM"),
        ("NVIDIA H200", "H200"),
        ("A100-SXM4-40GB", "A100-40GB"),
        ("a100", "A100-80GB"),
        ("L4", "L4"),
    ],
)
def test_accelerator_names_are_read_leniently(name: str, canonical: str) -> None:
    assert accelerator(name).name == canonical


def test_every_accelerator_names_its_source_and_an_unknown_one_is_refused() -> None:
    for entry in constants.ACCELERATORS:
        assert entry.memory_gb > 0 and entry.source
    with pytest.raises(UnknownAccelerator, match="accelerator_memory_gb"):
        accelerator("TPUv5")


def test_the_ecologits_label_is_the_installed_release() -> None:
    assert constants.ecologits_version() == metadata.version("ecologits")


def test_the_agent_port_is_the_one_deploy_uses() -> None:
    root = Path(__file__).resolve().parents[2]
    compose = (root / "deploy" / "compose.yaml").read_text()
    assert f'"--port", "{constants.AGENT_DEFAULT_PORT}"' in compose
    from meters.agent import DEFAULT_PORT

    assert DEFAULT_PORT == constants.AGENT_DEFAULT_PORT
