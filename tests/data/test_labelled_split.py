"""labelled_split: the labelled digits of a domain's train/val split are the ones build() puts there.

The reference is build()'s split as it was when labelled_split was added, written again from the
definitions: scikit-learn's digits scaled 0..16 -> 0..255, grey repeated into RGB, (and for
"images" the sample-photo patches after them), BOS then pixels in raster order, then
default_rng(seed).permutation with the first round(n * val_fraction) documents held out.
"""

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_sample_images

from fastscale.data.prepare import build, labelled_split

BOS = 256


def reference_digits():
    data = load_digits()
    grey = np.rint(data.images * (255 / 16)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=3), data.target.astype(np.int64)


def reference_photo_patches():
    patches = []
    for photo in load_sample_images().images:
        photo = np.asarray(photo, dtype=np.float64)
        for top in range(0, photo.shape[0] - 32 + 1, 16):
            for left in range(0, photo.shape[1] - 32 + 1, 16):
                patch = photo[top : top + 32, left : left + 32]
                patches.append(np.rint(patch.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))).astype(np.uint8))
    return np.stack(patches)


def reference_split(domain, val_fraction, seed):
    """(train documents, train labels, val documents, val labels); label -1 for a photo patch."""
    images, labels = reference_digits()
    if domain == "images":
        photos = reference_photo_patches()
        images = np.concatenate([images, photos])
        labels = np.concatenate([labels, np.full(len(photos), -1)])
    docs = np.concatenate([np.full((len(images), 1), BOS), images.reshape(len(images), -1)], axis=1).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = int(round(len(docs) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return docs[train], labels[train], docs[val], labels[val]


CASES = [("digits", 0.1, 0), ("digits", 0.25, 7), ("images", 0.1, 0), ("images", 0.05, 3)]


@pytest.mark.parametrize("domain,val_fraction,seed", CASES)
def test_build_keeps_its_split_bit_for_bit(domain, val_fraction, seed):
    _, train, val, _ = build(domain, val_fraction=val_fraction, seed=seed)
    ref_train, _, ref_val, _ = reference_split(domain, val_fraction, seed)
    for docs, ref in ((train, ref_train), (val, ref_val)):
        assert len(docs) == len(ref)
        assert all(d.dtype == np.int64 for d in docs)
        np.testing.assert_array_equal(np.stack(docs), ref)


@pytest.mark.parametrize("domain,val_fraction,seed", CASES)
def test_labelled_split_is_builds_split_with_the_true_labels(domain, val_fraction, seed):
    train, val = labelled_split(domain, val_fraction=val_fraction, seed=seed)
    ref_train, ref_train_labels, ref_val, ref_val_labels = reference_split(domain, val_fraction, seed)
    for split, ref, ref_labels in ((train, ref_train, ref_train_labels), (val, ref_val, ref_val_labels)):
        labelled = np.flatnonzero(ref_labels >= 0)
        np.testing.assert_array_equal(split.positions, labelled)
        np.testing.assert_array_equal(split.labels, ref_labels[labelled])
        assert split.images.dtype == np.uint8 and split.images.shape == (len(labelled), 8, 8, 3)
        np.testing.assert_array_equal(split.images.reshape(len(labelled), -1), ref[labelled, 1:])
    assert len(train.labels) + len(val.labels) == 1797
    # disjoint: no held-out digit is a training digit (the 1,797 digits are pairwise distinct)
    seen = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in seen for image in val.images)


def test_labelled_split_passes_other_build_options_through():
    train, val = labelled_split("digits", resolution=4, val_fraction=0.2, seed=1)
    _, train_docs, val_docs, _ = build("digits", resolution=4, val_fraction=0.2, seed=1)
    assert train.images.shape[1:] == (4, 4, 3)
    np.testing.assert_array_equal(train.images.reshape(len(train.images), -1), np.stack(train_docs)[:, 1:])
    np.testing.assert_array_equal(val.images.reshape(len(val.images), -1), np.stack(val_docs)[:, 1:])


@pytest.mark.parametrize("domain", ["photos", "video", "math"])
def test_labelled_split_refuses_domains_without_labels(domain):
    with pytest.raises(ValueError, match=rf"domain='{domain}'.*expected one of \('digits', 'images'\)"):
        labelled_split(domain)


def test_labelled_split_refuses_a_folder_of_images(tmp_path):
    with pytest.raises(ValueError, match=r"input=.*no labels"):
        labelled_split("digits", input=str(tmp_path))


def test_labelled_split_checks_options_like_build():
    with pytest.raises(ValueError, match=r"val_fraction=1\.5; expected a fraction in \[0, 1\)"):
        labelled_split("digits", val_fraction=1.5)
