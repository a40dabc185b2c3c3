"""Test helper: run the real tfds reading path on random data, offline.

    from jaxscale.data.testing import mock_tfds

    with mock_tfds(num_examples=512):
        ds = load_dataset("mnist")      # 512 random 28×28×1 train images, 512 test images

Inside the context every tfds dataset reads as ``num_examples`` random uint8 images of the real
shape with labels uniform in ``[0, num_classes)``; the data_dir is ignored and nothing is
downloaded. The train and test splits hold the *same* examples (tfds' mock generates them from a
fixed seed), so test error there says nothing about generalisation.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def mock_tfds(num_examples: int = 512) -> Iterator[None]:
    """``tfds.testing.mock_data`` with metadata taken from tfds' code (no metadata files needed)."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
        yield
