"""The surrogate gradient every LIF backend trains with (official: SpikingJelly's ``surrogate.Sigmoid(alpha=4)``):
``d spike / d h = alpha * sigmoid(alpha * (h - v_th)) * (1 - sigmoid(...))``. One constant, read by the torch, CuPy
and SpikingJelly backends alike."""

SURROGATE_ALPHA = 4.0
