"""The model repository fixtures (synthetic.models) for the triton service's tests."""

from synthetic.models import model_repository, tiny_model_repository  # noqa: F401  (pytest finds fixtures by name here)
