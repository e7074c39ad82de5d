"""Find the attention modules of a Hugging Face model and give them attnkit probes.

A transformers attention module (``GPT2Attention``, ``BertSelfAttention``, ``LlamaAttention``,
``ViTSelfAttention``, ...) is one whose ``forward`` looks up the implementation in
``ALL_ATTENTION_FUNCTIONS``. When such a module runs attnkit (``attn_implementation="attnkit"``),
:func:`attach_probes` gives it an :class:`~attnkit.layers.base.AttentionProbe` under
``module.attnkit_probe``; the attnkit attention function routes its output through it, so
:func:`attnkit.explain.capture` works on the model as on attnkit's own::

    attnkit.hf.register()
    model = AutoModel.from_pretrained(path, attn_implementation="attnkit")
    with attnkit.explain.capture(model, layers=[3], heads=[0, 5]) as cap:
        model(**inputs)
    cap.records[0].weights       # (B, 2, L, L), exact, while the forward stayed fused

The probe has no parameters: ``state_dict`` and ``save_pretrained`` are unchanged.
"""

from __future__ import annotations

import inspect

from torch import nn

from attnkit.hf.engine_backend import is_running_attnkit
from attnkit.layers.base import PROBE_ATTRIBUTE, AttentionProbe

__all__ = ["attach_probes", "find_hf_attention_modules"]

_INTERFACE_NAME = "ALL_ATTENTION_FUNCTIONS"


def _calls_attention_interface(module: nn.Module) -> bool:
    forward = inspect.unwrap(type(module).forward)  # past decorators such as deprecate_kwarg
    code = getattr(forward, "__code__", None)
    return code is not None and _INTERFACE_NAME in code.co_names


def find_hf_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` whose forward dispatches through transformers' attention interface."""
    return [(name, m) for name, m in model.named_modules() if _calls_attention_interface(m)]


def attach_probes(model: nn.Module) -> int:
    """Give every attention module of ``model`` that runs attnkit a probe; returns how many.

    Modules on another implementation (``eager``, ``sdpa``) get none: their weights never pass
    through attnkit, and capture says so instead of recording nothing. Idempotent.
    """
    count = 0
    for _, module in find_hf_attention_modules(model):
        if not is_running_attnkit(module):
            if hasattr(module, PROBE_ATTRIBUTE):  # switched away from attnkit since
                delattr(module, PROBE_ATTRIBUTE)
            continue
        if not isinstance(getattr(module, PROBE_ATTRIBUTE, None), AttentionProbe):
            module.add_module(PROBE_ATTRIBUTE, AttentionProbe())
        count += 1
    return count
