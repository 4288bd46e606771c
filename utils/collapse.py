"""Neural-collapse diagnostics of last-layer features: ordinary NC (Papyan et al., 2020) and the
zero-mean neural collapse (ZNC) with feature dimension separation of the FNO paper (Kim & Kim, 2024).

Notation, shared by every metric below.  ``H`` holds N feature vectors h_i (rows, dimension D),
``y`` their labels and ``W`` the head's weight matrix (one row w_k per class; for an FNO head
w_k = q_k, the k-th row of Q without the learnable scale; for an FC head the bias is ignored).
Only the K classes present in ``y`` take part (in continual learning: the classes seen so far).

    mu_k   = mean of the h_i of class k                 (class mean, from the origin)
    mu_G   = (1/K) sum_k mu_k                           (global mean, class-balanced)
    m_k    = mu_k - mu_G                                (class mean centred on the global mean)

Ordinary neural collapse looks at the centred means m_k, which converge to a simplex equiangular
tight frame (ETF): equal norms and pairwise cosines -1/(K-1).  The FNO paper's zero-mean collapse
looks at the means from the origin mu_k, which converge to equal-norm, mutually orthogonal,
non-negative vectors aligned with the fixed rows q_k, each living in its own block of dimensions.
All computations are done in float64.

``python -m utils.summarize.collapse RESULTS... [--plots OUT]`` compares runs saved with
``--collapse_metrics 1`` (see docs/collapse.md).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch


FEATURE_BATCH = 1024      # inputs per forward pass when extracting features
SUPPORT_ENERGY = 0.9      # a class mean's support: its fewest dimensions holding this energy fraction
_TINY = 1e-300            # guards divisions by a zero norm (dead features) without producing NaN


# ---------------------------------------------------------------------------------------------
# Metrics on a feature matrix
# ---------------------------------------------------------------------------------------------

def class_means(features: torch.Tensor, labels: torch.Tensor):
    """(classes present in ``labels`` (sorted), their means mu_k (K x D), index of each sample's class)."""
    classes, index = torch.unique(labels, sorted=True, return_inverse=True)
    counts = torch.bincount(index, minlength=len(classes)).to(features.dtype)
    sums = torch.zeros(len(classes), features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, index, features)
    return classes, sums / counts.unsqueeze(1), index


def nc1(features: torch.Tensor, means: torch.Tensor, index: torch.Tensor) -> float:
    """NC1, within-class variability collapse: tr(S_W S_B^+) / K.

    S_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T is the within-class covariance and
    S_B = (1/K) sum_k m_k m_k^T the between-class covariance of the centred means; ^+ is the
    Moore-Penrose pseudo-inverse.  It is 0 when every feature equals its class mean (the
    features of a class have collapsed to a point) and grows with the spread of the classes
    measured in units of the distances between them.  Invariant to scaling the features.

    Computed without forming D x D matrices: with M the K x D matrix of the m_k and
    S_B^+ = K M^+ (M^+)^T, tr(S_W S_B^+) / K = ||(H - mu_y) M^+||_F^2 / N.
    """
    centred_means = means - means.mean(0)
    within = features - means[index]
    return float((within @ torch.linalg.pinv(centred_means)).square().sum() / len(features))


def _cosines(vectors: torch.Tensor):
    """Norms of the rows and the cosines of all pairs j < k (a zero row has cosine 0 with everything)."""
    norms = vectors.norm(dim=1)
    unit = vectors / norms.clamp_min(_TINY).unsqueeze(1)
    j, k = torch.triu_indices(len(vectors), len(vectors), offset=1, device=vectors.device)
    return norms, (unit[j] * unit[k]).sum(1)


def _spread(values: torch.Tensor) -> float:
    """Coefficient of variation std/mean (population std): 0 when all values are equal."""
    return float(values.std(unbiased=False) / values.mean().clamp_min(_TINY))


def nc2(means: torch.Tensor) -> Dict[str, float]:
    """NC2 in both centrings: are the class means equal-norm and equiangular at the ideal angle?

    Global-mean centring (ordinary NC, the simplex ETF):
      nc2_global_equinorm   = std_k ||m_k|| / mean_k ||m_k||                   (ideal 0)
      nc2_global_cos_dev    = mean over pairs j<k of |cos(m_j, m_k) + 1/(K-1)|  (ideal 0)
      nc2_global_cos_dev_max= the same, maximum over pairs                        (ideal 0)
    Origin centring (ZNC: orthogonal class means from the origin):
      nc2_origin_equinorm   = std_k ||mu_k|| / mean_k ||mu_k||                 (ideal 0)
      nc2_origin_cos        = mean over pairs j<k of |cos(mu_j, mu_k)|          (ideal 0)
      nc2_origin_cos_max    = the same, maximum over pairs                        (ideal 0)
    With non-negative (post-ReLU) features the origin cosines are >= 0.  Note that orthonormal
    means are also a simplex ETF once centred, so ZNC implies the ordinary NC2 ideal as well;
    the converse is false.  All six are invariant to scaling the features.
    """
    k = len(means)
    g_norms, g_cos = _cosines(means - means.mean(0))
    o_norms, o_cos = _cosines(means)
    g_dev = (g_cos + 1.0 / (k - 1)).abs()
    o_dev = o_cos.abs()
    return {
        "nc2_global_equinorm": _spread(g_norms),
        "nc2_global_cos_dev": float(g_dev.mean()),
        "nc2_global_cos_dev_max": float(g_dev.max()),
        "nc2_origin_equinorm": _spread(o_norms),
        "nc2_origin_cos": float(o_dev.mean()),
        "nc2_origin_cos_max": float(o_dev.max()),
    }


def _frobenius_unit(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm().clamp_min(_TINY)


def nc3(means: torch.Tensor, weight: torch.Tensor) -> Dict[str, float]:
    """NC3, self-duality: do the classifier rows point like the class means?

      nc3_global = || M/||M||_F - W/||W||_F ||_F   with M the rows m_k   (ordinary NC, ideal 0)
      nc3_origin = || U/||U||_F - W/||W||_F ||_F   with U the rows mu_k  (ZNC, ideal 0)
    W holds the rows of the present classes, in the same order.  Each value lies in [0, 2]:
    0 when the means are a positive multiple of the classifier rows, sqrt(2) when they are
    orthogonal as matrices.  For an FNO head nc3_origin = 0 means each class mean is a multiple
    of its own q_k with a common factor.  Invariant to scaling the features or the weights.
    """
    unit_w = _frobenius_unit(weight)
    return {
        "nc3_global": float((_frobenius_unit(means - means.mean(0)) - unit_w).norm()),
        "nc3_origin": float((_frobenius_unit(means) - unit_w).norm()),
    }


def znc_margin(features: torch.Tensor, weight: torch.Tensor, index: torch.Tensor) -> Dict[str, float]:
    """The ZNC margin property: the head's responses w_k . h (for FNO, q_k . h) to each sample.

      margin_own_mean / margin_own_std     : mean and std over samples i of w_{y_i} . h_i
      margin_other_mean / margin_other_std : mean and std over pairs (i, k != y_i) of w_k . h_i
    Under ZNC with an FNO head every feature of class k is a multiple of q_k, so the own-class
    response is one positive constant (std 0) and every other response is exactly 0: the
    margin between the true logit and the others equals the own response.  For post-ReLU
    features and non-negative Q all responses are >= 0.  These are raw responses: they scale
    linearly with the features (a learnable FNO scale or an FC bias is not included).
    """
    responses = features @ weight.T
    own = torch.zeros_like(responses, dtype=torch.bool)
    own[torch.arange(len(index), device=index.device), index] = True
    return {
        "margin_own_mean": float(responses[own].mean()),
        "margin_own_std": float(responses[own].std(unbiased=False)),
        "margin_other_mean": float(responses[~own].mean()),
        "margin_other_std": float(responses[~own].std(unbiased=False)),
    }


def is_fno_weight(weight: torch.Tensor) -> bool:
    """True when the rows are non-negative, non-zero, and have pairwise disjoint supports (FNO's Q)."""
    support = weight != 0
    return bool((weight >= 0).all() and support.any(1).all() and (support.sum(0) <= 1).all())


def block_separation(features: torch.Tensor, index: torch.Tensor, classes: torch.Tensor,
                     weight: torch.Tensor) -> float:
    """Feature dimension separation for an FNO head: the share of each class's energy in its own block.

      separation = (1/K) sum_k  sum_{i in k} ||h_i[B_k]||^2 / sum_{i in k} ||h_i||^2
    where B_k is the support of the class's row q_k in the full head (all classes of the
    benchmark, seen or not).  1 means every feature of class k is zero outside the dimensions
    that Q gives to class k, so no feature dimension carries anything for another class (the
    paper's separation); features spread evenly over all D dimensions give about 1/K_total.
    Invariant to scaling the features and to permuting the classes.
    """
    in_block = weight[classes][index] != 0                      # N x D: the sample's own block
    energy = features.square()
    k = len(classes)
    own = torch.zeros(k, dtype=features.dtype, device=features.device)
    total = torch.zeros_like(own)
    own.index_add_(0, index, (energy * in_block).sum(1))
    total.index_add_(0, index, energy.sum(1))
    return float((own / total.clamp_min(_TINY)).mean())


def support_overlap(means: torch.Tensor, energy: float = SUPPORT_ENERGY) -> float:
    """Overlap of the class means' supports, for any head (ideal 0 under feature separation).

    The support S_k of a class mean mu_k (from the origin) is the smallest set of dimensions
    holding at least ``energy`` (default 90%) of ||mu_k||^2, taking the largest |mu_k[d]| first.
      support_overlap = mean over pairs j<k of |S_j n S_k| / |S_j u S_k|   (Jaccard index)
    0 when the classes use disjoint sets of dimensions (separation, as FNO's blocks impose),
    1 when every class mean lives on the same dimensions.  Unlike the origin cosine it ignores
    how the energy is shared inside the support: it asks which dimensions a class uses.
    Invariant to scaling the features and to permuting the classes.
    """
    power = means.square()
    order = power.argsort(dim=1, descending=True)
    cumulative = power.gather(1, order).cumsum(1)
    needed = cumulative < energy * power.sum(1, keepdim=True) * (1 - 1e-12)
    # keep the dimensions before the threshold is reached plus the one that reaches it
    keep_sorted = torch.cat([torch.ones_like(needed[:, :1]), needed[:, :-1]], dim=1) & (cumulative > 0)
    support = torch.zeros_like(needed).scatter(1, order, keep_sorted).to(means.dtype)
    inter = support @ support.T
    union = support.sum(1, keepdim=True) + support.sum(1) - inter
    j, k = torch.triu_indices(len(means), len(means), offset=1, device=means.device)
    return float((inter[j, k] / union[j, k].clamp_min(1)).mean())


def collapse_metrics(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                     fno: Optional[bool] = None) -> Dict[str, float]:
    """Every metric above as one flat dict of floats (keys in ``METRICS`` order).

    ``weight`` is the head's full K_total x D weight; rows of classes absent from ``labels``
    are ignored except by ``block_separation``, which uses the whole partition.  ``fno``:
    None detects an FNO head with ``is_fno_weight``; True insists (error if the rows are not
    disjoint and non-negative); False skips ``separation``, which is then absent.
    """
    features = features.detach().to(torch.float64)
    weight = weight.detach().to(device=features.device, dtype=torch.float64)
    labels = labels.to(features.device)
    if features.ndim != 2 or weight.ndim != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(f"features must be N x D and weight K x D; got {tuple(features.shape)} "
                         f"and {tuple(weight.shape)}")
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature vectors but {len(labels)} labels")
    classes, means, index = class_means(features, labels)
    if len(classes) < 2:
        raise ValueError(f"collapse metrics need at least 2 classes; got {len(classes)}")
    if int(classes.max()) >= len(weight) or int(classes.min()) < 0:
        raise ValueError(f"labels must lie in 0..{len(weight) - 1} (the head's rows); "
                         f"got {int(classes.min())}..{int(classes.max())}")
    detected = is_fno_weight(weight)
    if fno and not detected:
        raise ValueError("fno=True but the weight rows are not non-negative with disjoint supports")
    seen_weight = weight[classes]
    out = {"nc1": nc1(features, means, index), **nc2(means), **nc3(means, seen_weight),
           **znc_margin(features, seen_weight, index)}
    if detected if fno is None else fno:
        out["separation"] = block_separation(features, index, classes, weight)
    out["support_overlap"] = support_overlap(means)
    return out


METRICS = ("nc1", "nc2_global_equinorm", "nc2_global_cos_dev", "nc2_global_cos_dev_max",
           "nc2_origin_equinorm", "nc2_origin_cos", "nc2_origin_cos_max", "nc3_global", "nc3_origin",
           "margin_own_mean", "margin_own_std", "margin_other_mean", "margin_other_std",
           "separation", "support_overlap")


# ---------------------------------------------------------------------------------------------
# During a run
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def extract_features(run, n_seen_tasks: int):
    """Features (eval mode, test transform, no augmentation) and labels of the training data of
    the first ``n_seen_tasks`` tasks."""
    model, train = run.model, run.train
    seen = torch.nonzero(run.task_of_class[train.y] < n_seen_tasks).flatten()
    was_training = model.training
    model.eval()
    chunks = []
    for batch in seen.split(FEATURE_BATCH):
        with model.autocast():
            chunks.append(model.net(run.transform.test(train.x[batch]), return_features=True)[1].float())
    model.train(was_training)
    return torch.cat(chunks), train.y[seen]


def task_collapse_metrics(run, n_seen_tasks: int) -> Dict[str, float]:
    """``collapse_metrics`` on the training data of the tasks seen so far, plus ``tasks_seen``."""
    features, labels = extract_features(run, n_seen_tasks)
    return {"tasks_seen": n_seen_tasks, **collapse_metrics(features, labels, run.model.net.head.class_weights())}


def summary(metrics: Dict[str, float]) -> str:
    """A one-line digest for the training log."""
    keys = ("nc1", "nc2_global_cos_dev", "nc2_origin_cos", "nc3_origin", "separation", "support_overlap")
    return "  ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
