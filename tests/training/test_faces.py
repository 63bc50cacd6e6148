"""The procedural face generator and the evaluation masks."""

from __future__ import annotations

import numpy as np
import pytest

from service.faces import EVAL_SEEDS, TRAIN_SEEDS, face, face_params
from training.masks import FAMILIES, eye_mask, keep_mask


def test_faces_are_deterministic_per_seed_and_differ_across_seeds():
    a, pa = face(123)
    b, pb = face(123)
    assert (a == b).all() and pa == pb
    assert not (face(124)[0] == a).all()
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8


def test_training_and_evaluation_seeds_never_overlap():
    assert TRAIN_SEEDS.stop <= EVAL_SEEDS.start


def test_eyes_mirror_each_other_and_are_drawn_in_their_colour():
    img, p = face(EVAL_SEEDS[0])
    (lx, ly), (rx, ry) = p.eye_centres()
    assert ly == ry and abs((p.head_cx - lx) - (rx - p.head_cx)) < 1e-9
    for cx, cy in p.eye_centres():
        if p.eye_r >= 1.6:  # the centre pixel of a large enough eye is pure eye colour
            assert np.abs(img[int(cy), int(cx)].astype(int) - np.array(p.eye_colour)).max() <= 40


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_families_leave_something_known_and_something_unknown(family):
    keep = keep_mask(family, 32, seed=5)
    assert keep.shape == (32, 32) and 0 < keep.mean() < 1
    assert (keep_mask(family, 32, seed=5) == keep).all()


def test_eye_mask_hides_the_left_eye_only():
    p = face_params(EVAL_SEEDS[1])
    keep = eye_mask(p)
    (lx, ly), (rx, ry) = p.eye_centres()
    assert keep[int(ly), int(lx)] == 0 and keep[int(ry), int(rx)] == 1
