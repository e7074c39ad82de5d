"""Weights in and out of other libraries' attention layers.

- :mod:`attnkit.interop.torch_mha`: ``torch.nn.MultiheadAttention`` <-> MultiHeadAttention.
"""

from attnkit.interop.torch_mha import from_torch_mha, mask_from_torch, to_torch_mha

__all__ = ["from_torch_mha", "mask_from_torch", "to_torch_mha"]
