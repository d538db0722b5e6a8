"""Which digit is in a frame: an SVM trained on the real digits, applied to the 16x16 window
centred on the frame's centre of mass.

A pixel-space SVM is shift sensitive and a moving digit sits anywhere on the canvas, so both
the real digits it learns from and the frames it scores go through the same crop: the window
around the ink's centre of mass (see ``motion.centroids``).  It is trained at first use (a
few seconds, deterministic, cached in memory) on a fixed 80 % of the digits with every
one-pixel shift of each crop; the other 20 % give its held-out accuracy (about 99 %).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import BACKGROUND, CANVAS, DIGIT, load_digits, render_clip, split_indices
from .motion import centroids


def centred_crops(frames: torch.Tensor) -> torch.Tensor:
    """(N,32,32) frames in [-1,1] -> (N,16,16): the window centred on each frame's centre of mass."""
    c = centroids(frames)  # (N, 2) as (x, y)
    corner = (c - (DIGIT - 1) / 2).round().clamp(0, CANVAS - DIGIT).long()
    return torch.stack([f[y:y + DIGIT, x:x + DIGIT] for f, (x, y) in zip(frames, corner.tolist())])


def _shifts(crops: torch.Tensor) -> list[torch.Tensor]:
    """Every shift of (N,16,16) crops by -1..1 pixel in y and x, background filled in."""
    padded = F.pad(crops, (1, 1, 1, 1), value=BACKGROUND)
    return [padded[:, dy:dy + DIGIT, dx:dx + DIGIT] for dy in range(3) for dx in range(3)]


def _real_crops(images: torch.Tensor) -> torch.Tensor:
    """Each real (1,16,16) digit placed mid-canvas and cropped as a generated frame would be."""
    frames = torch.cat([render_clip(im, (0, 0), 1)[0] for im in images])  # a still path: centred
    return centred_crops(frames)


@dataclass
class FrameClassifier:
    model: object  # sklearn.svm.SVC
    heldout_accuracy: float = 0.0  # on the 20 % of real digits it never saw

    def predict(self, frames: torch.Tensor) -> torch.Tensor:
        """(N,32,32) frames in [-1,1] -> predicted digits (N,)."""
        x = centred_crops(torch.as_tensor(frames).detach().float().cpu().clamp(-1, 1))
        return torch.from_numpy(self.model.predict(x.flatten(1).numpy().astype(np.float64))).long()


@functools.lru_cache(maxsize=None)
def get_classifier(seed: int = 0) -> FrameClassifier:
    from sklearn.svm import SVC

    images, labels = load_digits()
    crops = _real_crops(images)
    train_idx, test_idx = split_indices(len(images), seed=seed)
    x_train = torch.cat(_shifts(crops[train_idx]))
    model = SVC(C=10.0, gamma="scale", random_state=seed)
    model.fit(x_train.flatten(1).numpy().astype(np.float64), labels[train_idx].repeat(9).numpy())
    clf = FrameClassifier(model)
    test_frames = torch.cat([render_clip(im, (0, 0), 1)[0] for im in images[test_idx]])
    clf.heldout_accuracy = float((clf.predict(test_frames) == labels[test_idx]).float().mean())
    return clf


def frame_accuracy(clips: torch.Tensor, digits) -> float:
    """Fraction of all frames of ``clips`` (B,1,F,32,32) classified as their clip's digit."""
    b, _, f = clips.shape[:3]
    want = torch.as_tensor(list(digits)).long().repeat_interleave(f)
    got = get_classifier().predict(clips[:, 0].reshape(b * f, CANVAS, CANVAS))
    return float((got == want).float().mean())
