"""Pure tensor math: masks, score biases, positions, validation and the float64 reference.

No parameters, and no imports from the rest of attnkit: :mod:`attnkit.engine` (``attention``)
and :mod:`attnkit.backends` build on this.
"""
