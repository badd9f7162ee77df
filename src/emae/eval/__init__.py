"""Evaluation of pre-trained encoders: fine-tuning, linear probing, k-NN, on frozen or trained timm ViTs."""

from .backbone import ViT, FrozenEncoder, build_vit, frozen_encoder
from .common import EvalOptions
from .data import eval_sources, labelled_images, split_folders
from .finetune import FinetuneOptions, finetune
from .knn import knn_eval, knn_run, knn_scores
from .linprobe import LinearHead, LinearProbe, ProbeOptions, linear_probe, logreg_probe
from .logreg import LogRegOptions, logistic_probe

__all__ = [
    "EvalOptions", "FinetuneOptions", "FrozenEncoder", "LinearHead", "LinearProbe", "LogRegOptions", "ProbeOptions", "ViT",
    "build_vit", "eval_sources", "finetune", "frozen_encoder", "knn_eval", "knn_run", "knn_scores",
    "labelled_images", "linear_probe", "logistic_probe", "logreg_probe", "split_folders",
]
