import numpy as np
import torch

from model.datasets import load_camvid
from model.features import DiffusionFeatureExtractor, FeatureConfig
from model.head import TrainConfig, train_head
from model.metrics import ConfusionMatrix
from model.prediction import evaluate, segment


def test_segment_and_evaluate_on_camvid(camvid_root, tiny_unet):
    ds = load_camvid(camvid_root, "val").head(2)
    ex = DiffusionFeatureExtractor(tiny_unet, FeatureConfig(resolution=32))
    maps = ex.maps(ds.image(0, 32))[0]
    labels = ds.labels(0, 32).ravel()
    known = np.flatnonzero(labels != 255)
    head, _ = train_head(maps.at(known), torch.from_numpy(labels[known].astype(np.int64)), 11,
                         TrainConfig(max_epochs=20))
    pred, conf = segment(head, maps)
    assert pred.shape == conf.shape == (32, 32) and pred.max() < 11 and ((conf > 0) & (conf <= 1)).all()
    scores = evaluate(head, ex, ds)
    by_hand = ConfusionMatrix(11)
    for i in range(2):
        by_hand.update(ds.labels(i, 32), segment(head, ex.maps(ds.image(i, 32))[0])[0])
    assert scores == by_hand.scores()
    assert evaluate(head, ex, ds) == scores  # no state carried between evaluations
