"""The bundled real data sets and their splits over nodes."""

from __future__ import annotations

import numpy as np
import pytest

from robust_training.data import dataset_layout, load_dataset, split_dataset
from robust_training.errors import TrainingError


@pytest.mark.parametrize(("name", "n_rows", "n_features"), [("digits", 1797, 64), ("mnist", 5000, 784)])
def test_bundled_data_loads_offline_standardised_and_stratified(name: str, n_rows: int, n_features: int) -> None:
    train, test = load_dataset(name, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == n_rows
    assert train.n_features == n_features and train.n_classes == 10
    assert abs(train.features.mean()) < 1e-9 and train.features.std() == pytest.approx(1.0)
    assert set(np.bincount(test.labels)) <= {int(round(0.2 * c)) for c in np.bincount(np.r_[train.labels, test.labels])}
    again, _ = load_dataset(name, seed=0)
    layout = dataset_layout(name)  # what a worker sizes its model from without the data
    assert len(layout) == 0 and layout.n_features == n_features
    assert (layout.n_classes, layout.image_shape) == (train.n_classes, train.image_shape)
    assert np.array_equal(again.features, train.features)


@pytest.fixture(scope="module")
def digits_train():
    return load_dataset("digits", seed=0)[0]


def _rows(parts) -> list[tuple]:
    return sorted(tuple(row) for part in parts for row in part.features)


@pytest.mark.parametrize(("scheme", "unequal"), [("iid", False), ("iid", True), ("shards", False), ("dirichlet", False)])
def test_every_split_deals_each_row_to_exactly_one_nonempty_node(digits_train, scheme: str, unequal: bool) -> None:
    parts = split_dataset(digits_train, 9, scheme, seed=5, unequal=unequal, alpha=0.1)
    assert len(parts) == 9 and all(len(p) > 0 for p in parts)
    assert _rows(parts) == sorted(tuple(row) for row in digits_train.features)


def test_non_iid_splits_really_skew_the_labels(digits_train) -> None:
    shards = split_dataset(digits_train, 10, "shards", seed=0)
    assert max(len(np.unique(p.labels)) for p in shards) <= 3
    dirichlet = split_dataset(digits_train, 10, "dirichlet", seed=0, alpha=0.05)
    iid = split_dataset(digits_train, 10, "iid", seed=0)
    def mean_classes(parts):
        return np.mean([len(np.unique(p.labels)) for p in parts])
    assert mean_classes(dirichlet) < 6 < mean_classes(iid)


def test_unequal_iid_sizes_differ_and_bad_requests_are_training_errors(digits_train) -> None:
    sizes = [len(p) for p in split_dataset(digits_train, 6, "iid", seed=1, unequal=True)]
    assert max(sizes) > 2 * min(sizes)
    with pytest.raises(TrainingError):
        split_dataset(digits_train, 6, "random-walk")
    with pytest.raises(TrainingError):
        split_dataset(digits_train, len(digits_train) + 1)
    with pytest.raises(TrainingError):
        load_dataset("cifar10")
