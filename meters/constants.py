"""Every default that stands for a physical or published quantity, each with its source.

One module, imported wherever a value is used (style.md habit 16), so a figure's provenance is
read in one place and `docs/methodology.md` can list them all. A value here is a *default*: the
configuration overrides PUE, WUE, server power and accelerator memory per upstream.

"ecologits 0.11.3" means the `ecologits` package's `impacts/llm.py` or `tracers/utils.py` in
that release (genai-impact/ecologits, MPL-2.0; method in its `docs/methodology/llm_inference.md`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import metadata

__all__ = [
    "ACCELERATORS",
    "AGENT_DEFAULT_PORT",
    "BYTES_PER_PARAMETER",
    "DEFAULT_ACCELERATOR",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PUE",
    "DEFAULT_SERVER_POWER_W_PER_GPU",
    "DEFAULT_WUE_L_PER_KWH",
    "FIGURE_FLOOR",
    "GPU_EMBODIED_KGCO2E",
    "GPU_ENERGY_A_WH",
    "GPU_ENERGY_B",
    "GPU_ENERGY_C_WH",
    "HARDWARE_LIFETIME_S",
    "INTENSITY_DATA_YEAR",
    "LATENCY_A_S",
    "LATENCY_B_S",
    "LATENCY_C_S",
    "MEMORY_OVERHEAD",
    "METHODOLOGY_VERSION",
    "SERVER_EMBODIED_KGCO2E",
    "SERVER_GPUS",
    "SIGNIFICANT_DIGITS",
    "Accelerator",
    "UnknownAccelerator",
    "accelerator",
    "ecologits_version",
]

# Bumped whenever a formula or a default below changes what a figure would be; every ledger row
# records the version it was computed under, so `footprint report --recompute` can say why a
# stored figure differs from today's arithmetic. History in docs/methodology.md.
METHODOLOGY_VERSION = "2"

# ---- estimation (methodology §3) ----------------------------------------------------------

# f_E(P, B) = a · e^(b·B) · P + c, Wh per output token per GPU, fit to ML.ENERGY leaderboard
# H100 data. Source: ecologits 0.11.3 GPU_ENERGY_ALPHA / _BETA / _GAMMA.
GPU_ENERGY_A_WH = 1.1665273170451914e-06
GPU_ENERGY_B = -0.011205921025579175
GPU_ENERGY_C_WH = 4.052928146734005e-05

# Seconds per output token = α_L · P + β_L · B + γ_L, same data. Source: ecologits 0.11.3
# LATENCY_ALPHA / _BETA / _GAMMA.
LATENCY_A_S = 0.0006785088094353663
LATENCY_B_S = 0.0003119310311688259
LATENCY_C_S = 0.019473717579473387

# Weights in 16 bits, 20 % over for activations and KV cache. Source: ecologits 0.11.3
# MODEL_QUANTIZATION_BITS and model_required_memory (after EleutherAI, "Transformer Math 101").
BYTES_PER_PARAMETER = 2.0
MEMORY_OVERHEAD = 1.2

# Requests one model instance serves at once. Source: ecologits 0.11.3 BATCH_SIZE.
DEFAULT_BATCH_SIZE = 64

# ---- facility (methodology §4) ----------------------------------------------------------

# Non-GPU server power (CPU, memory, fans, network) while serving: 1.2 kW per 8-GPU server,
# i.e. 150 W per GPU. Source: ecologits 0.11.3 SERVER_POWER (1.2 kW) / SERVER_GPUS (8), from
# BoaviztAPI for an AWS p5.48xlarge (8 × H100). A host's own figure goes in
# `[upstreams.hardware] server_w_per_gpu`.
DEFAULT_SERVER_POWER_W_PER_GPU = 150.0

# Power usage effectiveness. Source: ecologits 0.11.3 tracers/utils.py, OpenAI / Azure OpenAI
# (Microsoft's published fleet PUE, 1.20); Google 1.09, Mistral AI 1.16 in the same table.
DEFAULT_PUE = 1.2

# ---- water (methodology §6) -------------------------------------------------------------

# On-site water usage effectiveness, L/kWh. Source: ecologits 0.11.3 tracers/utils.py, OpenAI /
# Azure OpenAI (Microsoft's published WUE, 0.569); Google 0.99, Mistral AI 0.09 there.
DEFAULT_WUE_L_PER_KWH = 0.569

# ---- embodied carbon (methodology §5) ---------------------------------------------------

# Manufacturing emissions of an 8-GPU server without its GPUs, kgCO2e. Source: ecologits
# 0.11.3 SERVER_EMBODIED_IMPACT_GWP, from BoaviztAPI for an AWS p5.48xlarge.
SERVER_EMBODIED_KGCO2E = 5700.0
# GPUs per server that the server's embodied emissions are shared among. Source: ecologits
# 0.11.3 SERVER_GPUS.
SERVER_GPUS = 8
# Manufacturing emissions of one GPU (an H100 SXM), kgCO2e. Source: ecologits 0.11.3
# GPU_EMBODIED_IMPACT_GWP, which EcoLogits credits to the ADEME life-cycle assessment of the
# H100 by Lees-Perasso et al., not to Boavizta (Boavizta is the server's source). Older
# EcoLogits documentation used NVIDIA's HGX H100 product carbon footprint summary, 164 kg.
GPU_EMBODIED_KGCO2E = 273.0
# Hardware lifetime over which embodied emissions are spread: 3 years. Source: ecologits 0.11.3
# HARDWARE_LIFESPAN (after NVIDIA's HGX H100 PCF summary).
HARDWARE_LIFETIME_S = 3 * 365 * 24 * 60 * 60

# ---- grid intensity (methodology §5) ----------------------------------------------------

# The year the shipped per-zone table (meters/data/zones.csv, copied from ecologits 0.11.3's
# data/electricity_mixes.json) stands for: yearly averages from Our World in Data (Ember) for
# carbon, World Resources Institute for water, as EcoLogits updated them in September 2025
# (genai-impact/ecologits#181). EcoLogits does not state the year; 2024 is inferred: it was
# OWID's latest year then, and the figures are not 2023's (Germany 330 g against OWID's 381
# for 2023).
INTENSITY_DATA_YEAR = "2024"

# ---- accelerators (methodology §3, §5) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One accelerator model: its memory (for the estimator's GPU count) and where it is from."""

    name: str
    memory_gb: float
    source: str


# Memory per device from each vendor's datasheet. The estimator's GPU count divides a model's
# memory by this; EcoLogits always divides by 80 GB (an H100), so its figures match only there.
ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator("H100-SXM", 80.0, "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM, 80 GB)"),
    Accelerator("H100-PCIE", 80.0, "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe, 80 GB)"),
    Accelerator("H100-NVL", 94.0, "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL, 94 GB)"),
    Accelerator("H200", 141.0, "NVIDIA H200 Tensor Core GPU datasheet (141 GB HBM3e)"),
    Accelerator("B200", 180.0, "NVIDIA DGX B200 datasheet (1,440 GB for 8 GPUs)"),
    Accelerator("A100-40GB", 40.0, "NVIDIA A100 Tensor Core GPU datasheet (40 GB HBM2)"),
    Accelerator("A100-80GB", 80.0, "NVIDIA A100 Tensor Core GPU datasheet (80 GB HBM2e)"),
    Accelerator("L40S", 48.0, "NVIDIA L40S datasheet (48 GB GDDR6)"),
    Accelerator("L4", 24.0, "NVIDIA L4 Tensor Core GPU datasheet (24 GB GDDR6)"),
    Accelerator("A10G", 24.0, "AWS EC2 G5 instance documentation (NVIDIA A10G, 24 GB)"),
    Accelerator("T4", 16.0, "NVIDIA T4 Tensor Core GPU datasheet (16 GB GDDR6)"),
    Accelerator("V100-16GB", 16.0, "NVIDIA V100 Tensor Core GPU datasheet (16 GB HBM2)"),
    Accelerator("V100-32GB", 32.0, "NVIDIA V100 Tensor Core GPU datasheet (32 GB HBM2)"),
    Accelerator("MI300X", 192.0, "AMD Instinct MI300X datasheet (192 GB HBM3)"),
)
# The accelerator assumed where an upstream names none: EcoLogits' (an H100 80 GB).
DEFAULT_ACCELERATOR = "H100-SXM"

# Spellings people write for the same device (NVML names, cloud names), normalised upper-case.
_ALIASES = {
    "H100": "H100-SXM",
    "H100-SXM5": "H100-SXM",
    "H100-80GB": "H100-SXM",
    "H100-SXM5-80GB": "H100-SXM",
    "H200-SXM": "H200",
    "H200-141GB": "H200",
    "A100": "A100-80GB",
    "A100-SXM4-80GB": "A100-80GB",
    "A100-SXM4-40GB": "A100-40GB",
    "A100-PCIE-40GB": "A100-40GB",
    "A100-PCIE-80GB": "A100-80GB",
    "V100": "V100-16GB",
}


class UnknownAccelerator(LookupError):
    """An accelerator name the table does not have (give its memory instead)."""


def accelerator(name: str) -> Accelerator:
    """The table's entry for `name` (case and `NVIDIA ` prefix do not matter; common aliases
    such as `A100` or `H100-SXM5-80GB` are known). Raises `UnknownAccelerator`."""
    key = name.strip().upper().removeprefix("NVIDIA").strip().replace(" ", "-").replace("_", "-")
    key = _ALIASES.get(key, key)
    for entry in ACCELERATORS:
        if entry.name.upper() == key:
            return entry
    known = ", ".join(a.name for a in ACCELERATORS)
    raise UnknownAccelerator(
        f"unknown accelerator {name!r}: known are {known}; for another, give its memory "
        "([upstreams.hardware] accelerator_memory_gb)"
    )


# ---- figures as written -----------------------------------------------------------------

# Significant digits in headers, JSON and CSV: finer than any input's precision.
SIGNIFICANT_DIGITS = 6
# A figure smaller than this in magnitude is written 0: below a picojoule / picogram /
# nanolitre nothing here is meaningful (one output token's embodied carbon is ~1e-6 g).
FIGURE_FLOOR = 1e-12

# ---- ports --------------------------------------------------------------------------------

# `footprint agent`'s port: 9401, beside dcgm-exporter's 9400, so both can run on one node
# (deploy/compose.yaml, deploy/k8s/gpu-agent, contract.md all use 9401).
AGENT_DEFAULT_PORT = 9401


@cache
def ecologits_version() -> str:
    """The installed `ecologits` release (labels say which catalogue a figure came from)."""
    try:
        return metadata.version("ecologits")
    except metadata.PackageNotFoundError:
        return "unknown"
