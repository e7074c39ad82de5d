"""Pure functions over tensors: attention, masks, score biases, positions. No parameters."""
