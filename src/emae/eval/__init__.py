"""Evaluation of pre-trained encoders: fine-tuning, linear probing, k-NN, on the evaluation contract
(:mod:`emae.eval.backbone`); the commands that train run on the one loop (:mod:`emae.eval.training`)."""

from .backbone import FrozenEncoder, ViT, build_classifier, build_vit, frozen_encoder
from .data import eval_sources, labelled_images, split_folders
from .finetune import finetune
from .knn import knn_eval, knn_run, knn_scores
from .linprobe import LinearHead, LinearProbe, linear_probe, logreg_probe
from .logreg import LogRegOptions, logistic_probe

__all__ = [
    "FrozenEncoder", "LinearHead", "LinearProbe", "LogRegOptions", "ViT", "build_classifier", "build_vit",
    "eval_sources", "finetune", "frozen_encoder", "knn_eval", "knn_run", "knn_scores", "labelled_images",
    "linear_probe", "logistic_probe", "logreg_probe", "split_folders",
]
