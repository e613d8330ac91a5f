"""Training objectives over a flat float64 parameter vector, so codes and aggregators see plain arrays.

Every objective here (and the torch wrapper in `robust_training.models`) speaks the `Objective`
protocol: parameters are one (d,) float64 vector, the loss is the mean over the given samples plus a
regulariser, and the gradient is analytic. On multi-class data the lecture's binary formulas take
their multi-class forms: softmax cross-entropy for logistic regression, the Crammer–Singer hinge for
the soft-SVM; with two classes and w = w_1 - w_0 both reduce to the seed's binary losses
l = log(1 + exp(-y w.x)) and l = max(0, 1 - y w.x) (tests/test_losses.py checks it).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from robust_training.errors import TrainingError


class Objective(Protocol):
    """What the trainers need from a model: a flat parameter vector, loss and gradient, accuracy.

    An objective may also offer `loss_and_grad_batched(params, features (P, B, f), labels (P, B))`
    returning losses (P,) and gradients (P, d) of P equal-sized batches in one pass; the trainers use
    it when present (`robust_training.dgd.local_updates`), as the torch networks do.
    """

    n_params: int

    def initial_params(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A seeded starting point; `features` lets K-means start from data points."""
        ...

    def loss_and_grad(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss over the samples plus regulariser, and its gradient as a (d,) float64 vector."""
        ...

    def loss(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
        """The same loss without the gradient (cheaper for evaluation)."""
        ...

    def accuracy(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of samples labelled right (cluster purity for K-means)."""
        ...

    def named_arrays(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """The parameters under readable names and shapes, for `numpy.savez`."""
        ...


def _check_params(params: np.ndarray, n_params: int) -> None:
    if params.shape != (n_params,):
        raise TrainingError(f"expected a parameter vector of shape ({n_params},), got {params.shape}.")


class LinearClassifier:
    """Shared layout of the linear models: weights (n_features, n_classes) then biases (n_classes,).

    The regulariser (l2 / 2) ||W||_F^2 leaves the biases free, as in the usual soft-SVM.
    """

    def __init__(self, n_features: int, n_classes: int, l2: float = 1e-4) -> None:
        if n_classes < 2:
            raise TrainingError(f"a classifier needs at least 2 classes, got {n_classes}.")
        self.n_features = n_features
        self.n_classes = n_classes
        self.l2 = l2
        self.n_params = n_features * n_classes + n_classes

    def _unpack(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _check_params(params, self.n_params)
        split = self.n_features * self.n_classes
        return params[:split].reshape(self.n_features, self.n_classes), params[split:]

    def _pack(self, weight_grad: np.ndarray, bias_grad: np.ndarray) -> np.ndarray:
        return np.concatenate([weight_grad.ravel(), bias_grad])

    def initial_params(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Small random weights: zero would do for convex losses, but ties make argmax arbitrary."""
        return rng.normal(scale=0.01, size=self.n_params)

    def scores(self, params: np.ndarray, features: np.ndarray) -> np.ndarray:
        weights, biases = self._unpack(params)
        return features @ weights + biases

    def accuracy(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.scores(params, features), axis=1) == labels))

    def loss(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
        return self.loss_and_grad(params, features, labels)[0]

    def named_arrays(self, params: np.ndarray) -> dict[str, np.ndarray]:
        weights, biases = self._unpack(params)
        return {"weight": weights.copy(), "bias": biases.copy()}

    def _regularised(self, params: np.ndarray, data_loss: float, weight_grad: np.ndarray,
                     bias_grad: np.ndarray) -> tuple[float, np.ndarray]:
        weights, _ = self._unpack(params)
        loss = data_loss + 0.5 * self.l2 * float(np.sum(weights * weights))
        return loss, self._pack(weight_grad + self.l2 * weights, bias_grad)


class SoftmaxLogisticLoss(LinearClassifier):
    """Multi-class logistic regression: mean softmax cross-entropy + (l2/2)||W||^2."""

    def loss_and_grad(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        scores = self.scores(params, features)
        scores = scores - scores.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scores).sum(axis=1))
        n_samples = len(labels)
        data_loss = float(np.mean(log_norm - scores[np.arange(n_samples), labels]))
        probs = np.exp(scores - log_norm[:, None])
        probs[np.arange(n_samples), labels] -= 1.0
        probs /= n_samples
        return self._regularised(params, data_loss, features.T @ probs, probs.sum(axis=0))


class CrammerSingerHingeLoss(LinearClassifier):
    """Multi-class soft-SVM: mean max(0, 1 + max_{j != y} s_j - s_y) + (l2/2)||W||^2 (Crammer–Singer).

    The hinge is not differentiable at its kinks; the gradient returned there is the subgradient
    that picks the first maximising class, which is what GD on an SVM uses in practice.
    """

    def loss_and_grad(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        scores = self.scores(params, features)
        n_samples = len(labels)
        rows = np.arange(n_samples)
        margins = scores + 1.0 - scores[rows, labels][:, None]
        margins[rows, labels] = -np.inf
        rival = np.argmax(margins, axis=1)
        hinge = np.maximum(0.0, margins[rows, rival])
        active = hinge > 0
        coeff = np.zeros_like(scores)
        np.add.at(coeff, (rows[active], rival[active]), 1.0 / n_samples)
        np.add.at(coeff, (rows[active], labels[active]), -1.0 / n_samples)
        return self._regularised(params, float(hinge.mean()), features.T @ coeff, coeff.sum(axis=0))


class KMeansLoss:
    """K-means as a differentiable objective: mean min_k ||x - c_k||^2 over k centroids.

    Its gradient for centroid k is (2/m) sum over the points nearest to k of (c_k - x), so a GD step
    with rate 1/(2 * share of points in k) is Lloyd's update; labels are ignored in training and used
    only for `accuracy`, which is cluster purity (each cluster labelled by its majority class).
    """

    def __init__(self, n_features: int, n_clusters: int) -> None:
        if n_clusters < 1:
            raise TrainingError(f"K-means needs at least one cluster, got {n_clusters}.")
        self.n_features = n_features
        self.n_clusters = n_clusters
        self.n_params = n_features * n_clusters

    def _centroids(self, params: np.ndarray) -> np.ndarray:
        _check_params(params, self.n_params)
        return params.reshape(self.n_clusters, self.n_features)

    def initial_params(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Distinct data points as the first centroids (Forgy initialisation)."""
        if len(features) < self.n_clusters:
            raise TrainingError(f"K-means with {self.n_clusters} clusters needs at least as many samples, got {len(features)}.")
        chosen = rng.choice(len(features), size=self.n_clusters, replace=False)
        return features[chosen].astype(np.float64).ravel()

    def _sq_distances(self, params: np.ndarray, features: np.ndarray) -> np.ndarray:
        centroids = self._centroids(params)
        return (np.sum(features**2, axis=1)[:, None] - 2.0 * features @ centroids.T
                + np.sum(centroids**2, axis=1)[None, :])

    def loss_and_grad(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        centroids = self._centroids(params)
        nearest = np.argmin(self._sq_distances(params, features), axis=1)
        offsets = centroids[nearest] - features
        n_samples = len(features)
        loss = float(np.sum(offsets**2) / n_samples)
        grad = np.zeros_like(centroids)
        np.add.at(grad, nearest, offsets)
        return loss, (2.0 / n_samples) * grad.ravel()

    def loss(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
        return self.loss_and_grad(params, features, labels)[0]

    def accuracy(self, params: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
        nearest = np.argmin(self._sq_distances(params, features), axis=1)
        hits = 0
        for cluster in np.unique(nearest):
            hits += int(np.bincount(labels[nearest == cluster]).max())
        return hits / len(labels)

    def named_arrays(self, params: np.ndarray) -> dict[str, np.ndarray]:
        return {"centroids": self._centroids(params).copy()}

