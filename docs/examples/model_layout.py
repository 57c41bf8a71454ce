"""What a model provides: a registered architecture and its parameter layout (via the registry)."""

from jaxllm.model_loader.dummy import dummy_config
from jaxllm.models.layout import logical_axes_table, param_layout
from jaxllm.models.registry import get_model_class, supported_architectures

print(supported_architectures())

config = dummy_config("tiny")  # a small Llama-family ModelConfig (random-weight preset)
print(config.architecture, "->", get_model_class(config.architecture).__name__)
axes = logical_axes_table(config)  # leaf path -> logical sharding axes, one per dimension
for spec in param_layout(config):  # leaf path, HF tensor name, jaxllm shape ([L, ...] if stacked)
    t = "transposed" if spec.transpose else ""
    print("/".join(spec.path), spec.hf_name, spec.shape, axes[spec.path], t)
