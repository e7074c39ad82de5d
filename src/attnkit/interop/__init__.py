"""Weights in and out of other libraries' attention layers.

- :mod:`attnkit.interop.torch_mha`: ``torch.nn.MultiheadAttention`` <-> MultiHeadAttention.
- :mod:`attnkit.interop.keras_mha`: ``keras.layers.MultiHeadAttention`` (Keras 3, any backend)
  <-> MultiHeadAttention; keras is imported only when a converter runs
  (``pip install 'attnkit[keras]'``).
"""

from attnkit.interop.keras_mha import from_keras_mha, mask_from_keras, to_keras_mha
from attnkit.interop.torch_mha import from_torch_mha, mask_from_torch, to_torch_mha

__all__ = ["from_keras_mha", "from_torch_mha", "mask_from_keras", "mask_from_torch",
           "to_keras_mha", "to_torch_mha"]
