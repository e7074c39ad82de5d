"""The plain-math backend: slow, materializes Lq x Lk, supports everything. The test oracle."""

from __future__ import annotations

from torch import Tensor

from attnkit.backends.base import Backend, Capabilities
from attnkit.functional.math import AttentionSpec, reference_attention


class ReferenceBackend(Backend):
    name = "reference"
    capabilities = Capabilities()  # everything; materializes the Lq x Lk score matrix

    def forward(self, spec: AttentionSpec) -> Tensor:
        return reference_attention(spec)[0]
