"""The model repository fixtures (synthetic.models) for the tests that serve models with a real tritonserver."""

from synthetic.models import model_repository, tiny_model_repository  # noqa: F401  (pytest finds fixtures by name here)
