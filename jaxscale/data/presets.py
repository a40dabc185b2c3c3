"""The protocol's normalisation and augmentation per model family × dataset (PROTOCOL §3.1).

| family | MNIST, Fashion-MNIST           | CIFAR-10 / CIFAR-100                    | digits (offline)       |
|--------|--------------------------------|-----------------------------------------|------------------------|
| cnn    | mean 0.5, std 0.5; none        | CIFAR mean/std; none                    | digits mean/std; none  |
| resnet | affine; mean 0.1307, std 0.3081| crop_flip; CIFAR mean/std               | digits mean/std; none  |
| vit    | affine; mean 0.1307, std 0.3081| CIFAR mean/std; none                    | digits mean/std; none  |

CIFAR mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010), also used for CIFAR-100 as the
official code does. ResNet on MNIST follows the HEAD script (the pre-HEAD one used 0.5/0.5 and no
augmentation). The digits are not in the paper: their mean/std are those of the digits training
split in [0, 1] (population std over all pixels; a test recomputes them), and no augmentation (8×8 images are too small for the paper's ones).
Fashion-MNIST (not in the paper) has MNIST's shapes and takes MNIST's protocol. A user's own
``npz`` arrays are normalised with their training split's per-channel mean/std, not augmented.
"""

from __future__ import annotations

from typing import Optional

from jaxscale.config import FAMILIES
from jaxscale.data.datasets import DATASETS, ArrayDataset
from jaxscale.errors import UsageError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
MNIST_HALF_MEAN, MNIST_HALF_STD = (0.5,), (0.5,)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
#: mean/std of the digits training split in [0, 1], rounded to 4 decimals like the others
DIGITS_MEAN, DIGITS_STD = (0.3051,), (0.3761,)


def default_preprocessing(family: str, dataset: str, data: Optional[ArrayDataset] = None) -> dict:
    """``{"mean": tuple, "std": tuple, "augment": str}`` the protocol uses for ``family`` on
    ``dataset`` (see the module table); for ``npz`` (a user's own arrays, given as ``data``) the
    training split's per-channel mean/std and no augmentation. Raises :class:`UsageError` for an
    unknown name."""
    fam = family.lower()
    if fam not in FAMILIES:
        raise UsageError(f"unknown model family {family!r}: choose one of {', '.join(FAMILIES)}")
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset == "npz":
        from jaxscale.data.npz_source import channel_stats

        if data is None:
            raise UsageError("the npz dataset's normalisation is computed from its training split: pass data")
        mean, std = channel_stats(data.x_train, data.pixel_max)
        return {"mean": mean, "std": std, "augment": "none"}
    if dataset == "digits":
        return {"mean": DIGITS_MEAN, "std": DIGITS_STD, "augment": "none"}
    if dataset in ("mnist", "fashion_mnist"):  # Fashion-MNIST: MNIST's shapes, so MNIST's protocol
        if fam == "cnn":
            return {"mean": MNIST_HALF_MEAN, "std": MNIST_HALF_STD, "augment": "none"}
        return {"mean": MNIST_MEAN, "std": MNIST_STD, "augment": "affine"}
    # cifar10 / cifar100
    return {"mean": CIFAR_MEAN, "std": CIFAR_STD, "augment": "crop_flip" if fam == "resnet" else "none"}

