"""Test-session set-up shared by every test module."""

# Imported first so that a torchvision wheel built for another torch (the deepinv extra on CPU torch)
# cannot break transformers' import in a test module that imports transformers before lorun_peft.
import lorun_peft  # noqa: F401
