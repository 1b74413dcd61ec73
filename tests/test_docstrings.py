"""The usage examples in the public docstrings run (doctest), so they stay true."""

import doctest
import importlib

import pytest

# Modules whose docstrings carry examples: the layers, decoding, the model registry,
# weight conversion, transfer's entry points and the acceleration switch.
MODULES = [
    "cnnrnn.nn.rnn", "cnnrnn.nn.cells", "cnnrnn.nn.attention", "cnnrnn.decode",
    "cnnrnn.models", "cnnrnn.interop.torch_zoo", "cnnrnn.transfer.plans",
    "cnnrnn.accel.switch",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"{name} has no docstring examples"
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
