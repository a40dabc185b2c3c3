"""The offline default dataset: scikit-learn's bundled 8×8 handwritten digits.

1797 real images of the digits 0–9 (the UCI "optdigits" test set) ship inside the scikit-learn
wheel, so the quickstart and the tests need no download. Pixels are integers 0..16.

The train/test split is fixed and independent of every seed, so that the test set is the same for
all runs (like MNIST's official split): within each class, taken in the bundled order, the 40
examples at positions ``round(linspace(0, n_class - 1, 40))`` form the test set — exactly
stratified and evenly spread over the bundled order rather than a block at its end — and the rest
the training set, in the bundled order. That gives 400 test and
1397 train images. The rule is pure index arithmetic: no random number generator, so it cannot
change with a numpy version.
"""

from __future__ import annotations

import numpy as np

from jaxscale.data.datasets import ArrayDataset

#: test images per class (10 classes ⇒ 400 test images, 1397 training images)
TEST_PER_CLASS = 40
#: split sizes that rule gives for the 1797 bundled images (checked by the tests)
N_TRAIN, N_TEST = 1397, 400
#: a full-intensity pixel in the bundled digits
DIGITS_PIXEL_MAX = 16.0


def digits_split(y: np.ndarray, test_per_class: int = TEST_PER_CLASS) -> np.ndarray:
    """Boolean test mask ``[N]`` of the fixed stratified split (see the module docstring).

    Args:
      y: int labels ``[N]`` in the bundled order.
      test_per_class: test examples taken from each class (≤ that class's size).
    """
    y = np.asarray(y)
    test = np.zeros(y.shape[0], dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        pos = np.round(np.linspace(0, members.size - 1, test_per_class)).astype(np.int64)
        # For the digits the linspace step is ≈ n_class / 40 ≈ 4.5 > 1, so rounding never merges two
        # positions; a class smaller than test_per_class would, and cannot be split this way.
        if np.unique(pos).size != test_per_class:
            raise ValueError(f"class {c} has {members.size} examples, too few for {test_per_class} test ones")
        test[members[pos]] = True
    return test


def load_digits_dataset() -> ArrayDataset:
    """The bundled digits as an :class:`ArrayDataset`: uint8 ``[1397, 8, 8, 1]`` train,
    ``[400, 8, 8, 1]`` test, 10 classes, ``pixel_max`` 16."""
    from sklearn.datasets import load_digits  # lazy: importing scikit-learn takes ~1 s

    bunch = load_digits()
    images = np.asarray(bunch.images)  # float64 [1797, 8, 8], integer values 0..16
    x = np.rint(images).astype(np.uint8)[..., None]
    y = np.asarray(bunch.target).astype(np.int32)
    test = digits_split(y)
    return ArrayDataset(
        name="digits",
        x_train=np.ascontiguousarray(x[~test]),
        y_train=np.ascontiguousarray(y[~test]),
        x_test=np.ascontiguousarray(x[test]),
        y_test=np.ascontiguousarray(y[test]),
        num_classes=10,
        pixel_max=DIGITS_PIXEL_MAX,
    )
