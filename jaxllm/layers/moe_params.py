"""The parameter names of a mixture-of-experts layer (jaxllm/layers/moe.py), for the code that
lays its weights out (jaxllm.models.moe_layout, jaxllm.models.packed_params) without importing
the layer."""

EXPERTS = "experts"  # the params key of a layer's stacked expert weights
EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # its leaves, [E, in, out] each
