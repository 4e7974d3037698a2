"""gmia: generative anonymization of medical images (chest X-rays and patient faces).

Tensor convention at every public boundary: float32, NCHW (or CHW for one sample), values in [0, 1].
A network that wants another range converts inside its own ``forward``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
