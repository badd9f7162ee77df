"""Label-efficient measures of frozen features, shared by the pre-training monitor and evaluation: weighted k-NN
(as InstDisc / DINO: cosine similarity, votes exp(sim / T)) and RankMe, the effective rank of the embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, num_classes: int,
               k: int, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """(N_test, C) class scores: sum over the k most similar training samples of exp(cos_sim / T)."""
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test.shape[0], chunk):
        sim, idx = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=sim.dtype, device=sim.device)
        out.append(votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp()))
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracy in percent for each k (k capped at the number of classes)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == labels.unsqueeze(1)
    return [100.0 * hit[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks]


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023): exp of the entropy of the normalised singular values of the (N, D)
    embedding matrix, p_k = sigma_k / sum(sigma) + eps. Between 1 (collapsed to a line) and min(N, D); needs no
    labels."""
    sigma = torch.linalg.svdvals(embeddings.double())
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))
