"""Every objective's analytic gradient against central finite differences, and the binary special cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_training.data import Dataset
from robust_training.errors import TrainingError
from robust_training.losses import CrammerSingerHingeLoss, KMeansLoss, SoftmaxLogisticLoss
from robust_training.models import TorchObjective, fully_connected, make_objective


def _toy_images(n_samples: int = 12, side: int = 8, n_classes: int = 3, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_samples, side * side))
    labels = np.arange(n_samples) % n_classes
    return Dataset(features, labels, n_classes, (side, side))


def _finite_difference_check(objective, params, data, coordinates, eps=1e-6, rtol=1e-4, atol=1e-6) -> None:
    _, grad = objective.loss_and_grad(params, data.features, data.labels)
    for i in coordinates:
        bumped_up, bumped_down = params.copy(), params.copy()
        bumped_up[i] += eps
        bumped_down[i] -= eps
        numeric = (objective.loss_and_grad(bumped_up, data.features, data.labels)[0]
                   - objective.loss_and_grad(bumped_down, data.features, data.labels)[0]) / (2 * eps)
        assert numeric == pytest.approx(grad[i], rel=rtol, abs=atol), f"coordinate {i}"


@pytest.mark.parametrize("name", ["logistic", "svm", "kmeans", "fc", "lenet"])
def test_gradient_matches_finite_differences(name: str) -> None:
    data = _toy_images()
    if name == "fc":  # the machinery, not the width, is under test: a narrow FC keeps it fast
        objective = TorchObjective(fully_connected(data.n_features, data.n_classes, hidden=(32, 16)), torch.float64)
    else:
        objective = make_objective(name, data, l2=0.1, dtype=torch.float64)
    rng = np.random.default_rng(1)
    params = objective.initial_params(data.features, rng)
    if name in ("logistic", "svm"):
        params = rng.normal(scale=0.3, size=objective.n_params)  # away from the all-tied start
    if name == "kmeans":
        params = params + rng.normal(scale=0.1, size=params.shape)
    coordinates = rng.choice(objective.n_params, size=40, replace=False)
    _finite_difference_check(objective, params, data, coordinates)


def test_two_class_softmax_is_the_binary_logistic_loss() -> None:
    data = _toy_images(n_classes=2)
    objective = SoftmaxLogisticLoss(data.n_features, 2, l2=0.0)
    w = np.random.default_rng(2).normal(scale=0.2, size=data.n_features)
    params = np.concatenate([np.stack([np.zeros_like(w), w], axis=1).ravel(), np.zeros(2)])  # W = [0 | w]
    signs = np.where(data.labels == 1, 1.0, -1.0)
    binary = np.mean(np.log1p(np.exp(-signs * (data.features @ w))))
    assert objective.loss(params, data.features, data.labels) == pytest.approx(binary, rel=1e-12)


def test_two_class_crammer_singer_is_the_binary_hinge() -> None:
    data = _toy_images(n_classes=2)
    objective = CrammerSingerHingeLoss(data.n_features, 2, l2=0.0)
    w = np.random.default_rng(3).normal(scale=0.2, size=data.n_features)
    params = np.concatenate([np.stack([np.zeros_like(w), w], axis=1).ravel(), np.zeros(2)])
    signs = np.where(data.labels == 1, 1.0, -1.0)
    binary = np.mean(np.maximum(0.0, 1.0 - signs * (data.features @ w)))
    assert objective.loss(params, data.features, data.labels) == pytest.approx(binary, rel=1e-12)


def test_kmeans_gradient_step_is_lloyds_update_and_purity_is_perfect_on_separated_blobs() -> None:
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 20)
    features = centres[labels] + rng.normal(scale=0.5, size=(60, 2))
    objective = KMeansLoss(2, 3)
    params = (centres + 1.0).ravel()
    _, grad = objective.loss_and_grad(params, features, labels)
    # each cluster holds a third of the points: rate 1 / (2 * 1/3) moves centroids onto the cluster means
    stepped = (params - 1.5 * grad).reshape(3, 2)
    means = np.stack([features[labels == k].mean(axis=0) for k in range(3)])
    assert np.allclose(stepped, means)
    assert objective.accuracy(stepped.ravel(), features, labels) == 1.0


def test_named_arrays_cover_every_parameter_in_its_shape() -> None:
    data = _toy_images()
    objective = make_objective("lenet", data)
    params = objective.initial_params(data.features, np.random.default_rng(0))
    arrays = objective.named_arrays(params)
    assert sum(a.size for a in arrays.values()) == objective.n_params
    assert arrays["1.weight"].shape == (6, 1, 5, 5)


def test_fc_is_dracos_784_800_500_10_on_mnist_sized_inputs() -> None:
    data = Dataset(np.zeros((2, 784)), np.array([0, 1]), 10, (28, 28))
    assert make_objective("fc", data).n_params == 784 * 800 + 800 + 800 * 500 + 500 + 500 * 10 + 10


def test_wrong_parameter_shape_and_unknown_model_are_training_errors() -> None:
    data = _toy_images()
    with pytest.raises(TrainingError):
        SoftmaxLogisticLoss(data.n_features, 3).loss(np.zeros(5), data.features, data.labels)
    with pytest.raises(TrainingError):
        make_objective("transformer", data)
