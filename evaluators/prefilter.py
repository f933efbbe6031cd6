"""A zero-cost prefilter: predict which candidates will train poorly, and train only the rest.

In the spirit of AQuaSurF (Bingham and Miikkulainen, "Efficient activation function
optimization through surrogate modeling", NeurIPS 2023), which found that an activation's
output on N(0, 1) samples (with the Fisher spectrum, not used here: it needs a model and
data) predicts its trained accuracy well enough to skip most trainings. Here:

- features: the activation's response on N(0, sigma^2) at fixed quantiles, standardised
  (its shape, free of scale and offset, which a following layer absorbs), its slope at
  the same points relative to its spread, a few summary numbers, and the EAFO scores of
  evaluators.entropy_score (negentropy, WAFBC distance, atom mass);
- model: a Gaussian process on those features (z-scored, then projected on their
  leading principal components, where AQuaSurF uses UMAP), fitted to the candidates
  trained so far;
- decision: keep the k candidates with the highest upper confidence bound
  mean + kappa * std, so an unfamiliar candidate is not dropped for being unfamiliar.

    pf = Prefilter(sigma=0.16)
    for cand, score in trained:            # higher is better (negate a loss)
        pf.observe(cand, score)
    keep = pf.select(proposals, k=4)       # indices into proposals, best first

Before MIN_HISTORY observations there is nothing to learn from: `select` keeps the first
k proposals whose features are finite, in the order given (the sampler's order). A
candidate whose features are not finite (NaN output, no theory) is kept only when there
are not k others. Numbers only: no Optuna, no Ray, no training.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtri

# Input quantiles of N(0, sigma^2) at which the response is read: 32 equal-probability
# points, (i + 1/2) / 32, from -2.15 sigma to 2.15 sigma.
N_POINTS = 32
MIN_HISTORY = 4          # observations before the model is used
MAX_COMPONENTS = 8       # principal components the GP sees (AQuaSurF projects to 2-3 with UMAP)
NOISE_FRACTION = 0.1     # GP noise variance as a fraction of the observed scores' variance


def features(candidate, sigma: float = 1.0) -> np.ndarray:
    """The feature vector of `candidate` at its initial coefficients (NaN where undefined).

    [standardised response at the N_POINTS quantiles (N_POINTS values), slope at the same
    points times sigma / output std (N_POINTS), fraction of the points where the slope is
    negative, mean slope times sigma / output std, output mean / std, negentropy, WAFBC
    distance, atom mass]. Every entry is unchanged when the activation is multiplied by a
    positive constant.
    """
    from evaluators.zero_cost import entropy_score

    z = ndtri((np.arange(N_POINTS) + 0.5) / N_POINTS)
    xs = sigma * z
    with np.errstate(all="ignore"):
        y = candidate.evaluate(xs)
        dy = candidate.evaluate(xs, derivative=True)
    std = float(np.std(y))
    nan = np.full(2 * N_POINTS + 6, math.nan)
    if not (np.isfinite(y).all() and np.isfinite(dy).all()) or not std > 0:
        return nan
    slope = dy * sigma / std
    scores = entropy_score(candidate, sigma)
    return np.concatenate([(y - y.mean()) / std, slope,
                           [float(np.mean(dy < 0)), float(slope.mean()), float(y.mean()) / std,
                            scores["negentropy"], scores["wafbc_distance"], scores["atom_mass"]]])


class Prefilter:
    """Learns, from trained candidates, which proposals are worth training (see module)."""

    def __init__(self, sigma: float = 1.0, *, kappa: float = 1.0):
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa >= 0):
            raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")
        self.sigma, self.kappa = float(sigma), float(kappa)
        self._features: dict[str, np.ndarray] = {}  # fingerprint -> features
        self._seen: list[tuple[np.ndarray, float]] = []

    def features(self, candidate) -> np.ndarray:
        fp = candidate.fingerprint
        if fp not in self._features:
            self._features[fp] = features(candidate, self.sigma)
        return self._features[fp]

    def observe(self, candidate, score: float) -> None:
        """Record a trained candidate's score (higher is better). A NaN or infinite score
        (a diverged or failed run) is recorded as the worst score seen so far."""
        self._seen.append((self.features(candidate), float(score)))

    def predict(self, candidates) -> tuple[np.ndarray, np.ndarray]:
        """Predicted score mean and std per candidate (NaN for non-finite features, and
        for everything before MIN_HISTORY usable observations)."""
        x = np.array([self.features(c) for c in candidates], dtype=float).reshape(len(candidates), -1)
        mean, std = np.full(len(candidates), math.nan), np.full(len(candidates), math.nan)
        seen = [(f, s) for f, s in self._seen if np.isfinite(f).all()]
        if len(seen) < MIN_HISTORY or not len(candidates):
            return mean, std
        fx = np.array([f for f, _ in seen])
        scores = np.array([s for _, s in seen])
        finite = np.isfinite(scores)
        if not finite.any():
            return mean, std
        scores = np.where(finite, scores, scores[finite].min())  # a failure is the worst seen
        ok = np.isfinite(x).all(axis=1)
        if ok.any():
            mean[ok], std[ok] = _gp(fx, scores, x[ok])
        return mean, std

    def select(self, candidates, k: int) -> list[int]:
        """Indices of the k candidates to train, most promising first (see the module)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        candidates = list(candidates)
        mean, std = self.predict(candidates)
        ucb = mean + self.kappa * std
        finite = np.array([np.isfinite(self.features(c)).all() for c in candidates], dtype=bool)
        if np.isfinite(ucb).any():
            order = sorted(range(len(candidates)),
                           key=lambda i: (not finite[i], -ucb[i] if np.isfinite(ucb[i]) else math.inf, i))
        else:  # nothing learned yet: the proposals' own order, broken features last
            order = sorted(range(len(candidates)), key=lambda i: (not finite[i], i))
        return order[:k]


def select(candidates, k: int, *, history=(), sigma: float = 1.0, kappa: float = 1.0) -> list[int]:
    """One-shot form: `history` is (candidate, score) pairs already trained."""
    pf = Prefilter(sigma, kappa=kappa)
    for cand, score in history:
        pf.observe(cand, score)
    return pf.select(candidates, k)


def _gp(fx: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GP posterior mean and std at x, trained on (fx, y): z-scored features, the leading
    principal components of the training features, an RBF kernel with the median
    pairwise distance as length scale, signal variance var(y), noise NOISE_FRACTION
    var(y), constant mean(y). Deterministic; a few candidates' worth of numpy."""
    mu, sd = fx.mean(axis=0), fx.std(axis=0)
    sd[sd == 0] = 1.0
    a, b = (fx - mu) / sd, (x - mu) / sd
    _, _, vt = np.linalg.svd(a - a.mean(axis=0), full_matrices=False)
    basis = vt[:min(MAX_COMPONENTS, len(a) - 1, vt.shape[0])].T
    pa, pb = a @ basis, b @ basis
    d_train = np.sqrt(((pa[:, None] - pa[None]) ** 2).sum(-1))
    scale = float(np.median(d_train[np.triu_indices(len(pa), 1)])) or 1.0
    y_mean, y_var = float(y.mean()), float(y.var()) or 1.0

    def kernel(p, q):
        return y_var * np.exp(-((p[:, None] - q[None]) ** 2).sum(-1) / (2 * scale**2))

    k_train = kernel(pa, pa) + NOISE_FRACTION * y_var * np.eye(len(pa))
    chol = np.linalg.cholesky(k_train)
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y - y_mean))
    k_cross = kernel(pb, pa)
    mean = y_mean + k_cross @ alpha
    v = np.linalg.solve(chol, k_cross.T)
    var = np.maximum(y_var - (v * v).sum(0), 0.0)
    return mean, np.sqrt(var)


__all__ = ["Prefilter", "select", "features", "N_POINTS", "MIN_HISTORY"]
