"""Evaluation of EDLAE and its baselines under strong generalization (Liang et al. 2018).

- :mod:`.split`: users split into train / validation / test, held-out rows into
  80 % fold-in and 20 % targets, items limited to those seen in training.
- :mod:`.metrics`: nDCG@100, Recall@20, Recall@50 with standard errors.
- :mod:`.models` / :mod:`.scoring`: Algorithm 1, the full-rank teacher, EASE and
  the unconstrained low-rank LAE from one shared Gram; held-out scores and top-N
  lists as Dask graphs over item blocks.
- :mod:`.objectives`: the eq.-14 / eq.-15 objectives, the numerical optimum of
  eq. 14, and the Proposition's bound on any k-bottleneck autoencoder.
- :mod:`.cv`: :class:`~.cv.StrongGeneralizationCV` and :func:`~.cv.fold_in_scorer`, the protocol for
  scikit-learn / dask-ml ``GridSearchCV`` over :class:`~edlae_dask.model.EDLAE` on a matrix.
- :mod:`.search`: :class:`Evaluator` (split + shared Gram, reused) and
  :func:`evaluate` (the (λ, p) grid chosen on validation users, reported on test users).
- :mod:`.scalable`: :func:`evaluate_scalable`, the same protocol on the scalable path (a (K, λ, p)
  grid; no n × n matrix; shards and neighbour lists shared by every point).
- :mod:`.popularity`: the popularity baseline, the first row of every report.

Example::

    from edlae_dask.evaluation import Evaluator
    with Evaluator("interactions.zarr", n_valid=600, n_test=600, seed=0) as ev:
        for k in (10, 100, 1000):                       # e.g. benchmarks/figure1.py
            report = ev.run(models=["edlae", "lae"], ks=[k], lams=[10, 100], ps=[0.1, 0.3])
            print(report.table())
"""

from edlae_dask.evaluation.metrics import MetricSummary, ndcg_at_k, recall_at_k, summarize, user_metrics
from edlae_dask.evaluation.models import MODELS
from edlae_dask.evaluation.objectives import (
    autoencoder_error_bound,
    closed_form_dense,
    exact_lowrank_optimum,
    objective_eq14,
    objective_eq15,
    objective_eq15_closed_form,
)
from edlae_dask.evaluation.scalable import evaluate_scalable
from edlae_dask.evaluation.search import EvaluationReport, Evaluator, GridResult, evaluate, paired_difference
from edlae_dask.evaluation.split import HeldOut, Split, strong_generalization_split

__all__ = [
    "MODELS",
    "EvaluationReport",
    "Evaluator",
    "GridResult",
    "HeldOut",
    "MetricSummary",
    "Split",
    "autoencoder_error_bound",
    "closed_form_dense",
    "evaluate",
    "evaluate_scalable",
    "exact_lowrank_optimum",
    "ndcg_at_k",
    "objective_eq14",
    "objective_eq15",
    "objective_eq15_closed_form",
    "paired_difference",
    "recall_at_k",
    "strong_generalization_split",
    "summarize",
    "user_metrics",
]
