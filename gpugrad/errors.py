"""gpugrad's exception types: subclasses of the standard ones, so `except ValueError` still works."""


class ShapeError(ValueError):
    """Shapes that cannot work together (broadcasting, matmul, reshape, layer sizes)."""


class DeviceError(RuntimeError):
    """A device that is unknown or unusable, or an op mixing devices."""


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree (raised by gg.gradcheck)."""
