"""Classification data sets shipped inside aeon's wheel, and a generated long-range task, loaded by
name, offline, ready for the HRU.

Why this shape: the HRU consumes one sequence ``u`` of shape (L, N) at a time, and sequences of
one data set may differ in length (JapaneseVowels: 7..29 steps). Each split is therefore a
zero-padded array (S, L_max, N) plus the true length of every sample; the model pools and
echoes over the true steps only. Channels are normalised with the mean and standard deviation
of the *training* split (over true steps only), so the test split never leaks into training.

Input features (``features``), part of the model's architecture:

- ``raw``: the normalised channels.
- ``energy``: each normalised channel and its square, the squares normalised again with their own
  training statistics (2N inputs). A linear HRU whose positions are mean-pooled is linear in its
  input, so it cannot see a class difference in signal *energy* (BasicMotions' classes differ
  mostly there); the squared channels give the linear model that quadratic statistic.

Generated long-range task, ``DelayedRecall-<L>`` (L steps, RECALL_MIN_LENGTH <= L <=
RECALL_MAX_LENGTH; e.g. ``DelayedRecall-1000``, ``-16000``, ``-50000``). The paper's long sets
cannot be downloaded here, so this classic delayed-recall task shows the memory claim on learning:

- C = 4 classes (chance 25 %), N = 4 input channels, one per symbol. The class is a pulse of
  height 1 on its symbol's channel for ``p = ceil(sqrt(L) / 2)`` steps, starting at a uniformly
  random step chosen so that the pulse lies inside the first 5 % of the sequence (the first
  ``L // 20`` steps). Every channel carries Gaussian noise of standard deviation 0.125 at every
  step, pulse included. Nothing after the pulse depends on the label.
- Why these amplitudes. A non-dissipative oscillator driven by white noise gains energy linearly
  in time, so after L steps its noise amplitude is ~ 0.125 * sqrt(L) (in input units x step),
  while a pulse of height 1 and p steps leaves an amplitude of up to p (for oscillators slower
  than the pulse). Their ratio, the memory's signal-to-noise ratio, is 8 * p / sqrt(L) >= 4 at
  every L. At 4, the largest of four running sums (a free mass, A = 0) names the symbol in ~99 %
  of samples, and the largest of four oscillator energies (any phase) in ~99.9 %, at L = 1k and
  50k alike: the task's difficulty does not change with L, only the distance to remember. The
  pulse lengthens with sqrt(L) rather than growing in height: normalised, the noise is ~1 and the
  pulse ~8, and the fixed-point input word clips at +-16 (training's ``clip``), so height alone
  cannot beat the noise a 50k-step oscillator collects (an 8-step pulse as high as the clip
  allows would give a ratio of ~0.6 there). With ``features="raw"`` nothing reaches the clip
  (largest normalised value ~12 at 50k); with ``"energy"`` the squared channel saturates at
  the clip on pulse steps (counted in ``clipped``), which keeps the information.
- No recall cue ("query" channel that is 1 on the last step). The model reads the mean over all
  steps, so a marker at a fixed step carries no class information, and after normalisation a
  channel that is 1 on one step in L becomes ~sqrt(L) there (~224 at 50k): it would be clipped,
  or kick every oscillator hard just before the read-out. The sequence end is the cue.
- Same for everyone: the generator is numpy's PCG64 seeded with ``[RECALL_SEED, L, split]``
  (split 0 train, 1 test), labels balanced exactly (a permutation of equal class counts), drawn
  before the pulse starts and the noise; identical arrays on every call and machine with the
  pinned numpy. Splits are normalised like aeon's (training statistics, ``clip``, ``features``).
- Size: up to 100 training samples per class (400 train, 200 test) while the raw training split,
  S x L x N float64, stays within RECALL_TRAIN_BYTES (400 MB); longer sequences get fewer:
  L = 1k and 16k 400/200, L = 50k 248/124 (397 MB). Loading holds about 4x that while it
  normalises (7x with ``"energy"``).

What it shows: accuracy far above 25 % needs the label to travel from the first 5 % of the
sequence to the loss over L steps; the second half alone carries no information. A model that
pools over time can also detect the pulse step by step and carry it in its running sum, so the
task shows training over L steps with memory flat in L, not that the oscillators alone hold it.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

FEATURES = ("raw", "energy")

RECALL_FAMILY = "DelayedRecall"
RECALL_CLASSES = 4  # classes = input channels, one per symbol
RECALL_NOISE = 0.125  # noise standard deviation; the pulse has height 1 (module docstring)
RECALL_WINDOW = 20  # the pulse lies in the first L // RECALL_WINDOW steps (5 %)
RECALL_MIN_LENGTH = 400  # the first 5 % holds the pulse twice: sqrt(L) / 2 <= L / 40
RECALL_MAX_LENGTH = 200_000  # still 15 training samples per class within RECALL_TRAIN_BYTES
RECALL_TRAIN_BYTES = 400e6  # the raw training split (S x L x N float64) stays within this
RECALL_PER_CLASS = 100  # training samples per class when they fit (test: half)
RECALL_SEED = 250605259  # arXiv 2506.05259, the RHEL paper
RECALL_LISTED = (1000, 16000, 50000)  # the lengths available_datasets() names


@dataclass(frozen=True)
class Split:
    """One split: ``x`` (S, L_max, N) float64, zero beyond each sample's ``lengths``; labels 0..C-1."""

    x: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """A normalised train/test pair with the class names (``classes[label]``) and the statistics used.

    Input channel i is ``(f_i - mean[i]) / std[i]`` for its feature f_i: a raw channel, or (the
    second half, ``energy``) the square of a normalised raw channel.
    """

    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    mean: np.ndarray  # (N,) training-split feature means
    std: np.ndarray  # (N,) training-split feature standard deviations (1 where a feature is constant)
    clipped: int  # normalised values clipped to ±clip (both splits)
    features: str = "raw"

    @property
    def n_inputs(self) -> int:
        return self.train.x.shape[2]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _aeon_data_dir() -> str:
    import aeon.datasets

    return os.path.join(os.path.dirname(aeon.datasets.__file__), "data")


def _has_class_labels(ts_path: str) -> bool:
    """True when the .ts header declares class labels (regression and forecasting sets do not)."""
    with open(ts_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip().lower()
            if line.startswith("@classlabel"):
                return line.split()[1:2] == ["true"]
            if line.startswith("@data"):
                return False
    return False


def _aeon_datasets() -> list[str]:
    """Names of the classification sets in aeon's wheel: those with a labelled ``NAME_TRAIN.ts``."""
    root = _aeon_data_dir()
    names = []
    for name in sorted(os.listdir(root)):
        train = os.path.join(root, name, f"{name}_TRAIN.ts")
        if os.path.isfile(os.path.join(root, name, f"{name}_TEST.ts")) and os.path.isfile(train):
            if _has_class_labels(train):
                names.append(name)
    return names


def available_datasets() -> list[str]:
    """aeon's classification sets, then the generated delayed-recall task at the lengths of issue 10
    (``DelayedRecall-1000``, ``-16000``, ``-50000``); any ``DelayedRecall-<L>`` in
    RECALL_MIN_LENGTH..RECALL_MAX_LENGTH loads too (module docstring)."""
    return _aeon_datasets() + [f"{RECALL_FAMILY}-{n}" for n in RECALL_LISTED]


def _recall_family_hint() -> str:
    return (f"{RECALL_FAMILY}-<L> (generated delayed recall, L steps, "
            f"{RECALL_MIN_LENGTH} <= L <= {RECALL_MAX_LENGTH}, e.g. {RECALL_FAMILY}-16000)")


def _recall_length(name: str) -> int | None:
    """L of a ``DelayedRecall-<L>`` name, None for any other name; a malformed L is an error."""
    if not name.startswith(RECALL_FAMILY):
        return None
    match = re.fullmatch(rf"{RECALL_FAMILY}-([1-9][0-9]*)", name)
    if match is None:
        raise ValueError(f"malformed data set name {name!r}: the generated task is named {_recall_family_hint()}, "
                         "L written as a whole number of steps")
    length = int(match.group(1))
    if not RECALL_MIN_LENGTH <= length <= RECALL_MAX_LENGTH:
        raise ValueError(f"data set {name!r}: length L = {length} is outside {RECALL_MIN_LENGTH}..{RECALL_MAX_LENGTH} "
                         f"(below, the pulse does not fit twice into the first 5 %; above, the training split "
                         f"would exceed {RECALL_TRAIN_BYTES / 1e6:.0f} MB with 15 samples per class)")
    return length


def _recall_pulse(length: int) -> tuple[int, int]:
    """(window, steps): the pulse's ``steps`` lie inside the first ``window`` steps."""
    return length // RECALL_WINDOW, math.ceil(math.sqrt(length) / 2)


def _recall_samples(length: int) -> tuple[int, int]:
    """(train, test) sample counts of ``DelayedRecall-<length>``: balanced, train within RECALL_TRAIN_BYTES."""
    row_bytes = RECALL_CLASSES * length * RECALL_CLASSES * 8  # one sample per class, N = C channels
    per_class = min(RECALL_PER_CLASS, int(RECALL_TRAIN_BYTES // row_bytes))
    return RECALL_CLASSES * per_class, RECALL_CLASSES * (per_class // 2)


def _delayed_recall(length: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The raw (unnormalised) split of ``DelayedRecall-<length>``: x (S, L, C), labels (S,), pulse starts (S,)."""
    n = _recall_samples(length)[0 if split == "train" else 1]
    rng = np.random.default_rng([RECALL_SEED, length, 0 if split == "train" else 1])
    labels = rng.permutation(np.repeat(np.arange(RECALL_CLASSES, dtype=np.int64), n // RECALL_CLASSES))
    window, steps = _recall_pulse(length)
    starts = rng.integers(0, window - steps + 1, size=n)
    x = rng.standard_normal((n, length, RECALL_CLASSES))
    x *= RECALL_NOISE
    x[np.arange(n)[:, None], starts[:, None] + np.arange(steps), labels[:, None]] += 1.0
    return x, labels, starts


def _recall_splits(length: int):
    """Both raw splits as lists of (L, C) views, so that their arrays go once the lists do."""
    (x, y, _), (tx, ty, _) = _delayed_recall(length, "train"), _delayed_recall(length, "test")
    return list(x), y, list(tx), ty


def _load_split(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """aeon's arrays as a list of (L, N) float64 sequences and the raw string labels."""
    from aeon.datasets import load_classification

    x, y = load_classification(name, split=split)
    seqs = [np.asarray(s, dtype=np.float64).T for s in x]  # aeon gives (channels, length)
    for i, s in enumerate(seqs):
        if np.isnan(s).any():
            raise ValueError(f"data set {name!r} ({split} split) has NaN values in sample {i}; "
                             "the HRU needs complete sequences")
    return seqs, np.asarray(y).astype(str)


def _class_order(labels: np.ndarray) -> tuple[str, ...]:
    """Sorted class names; numerically when every name is a number (so '10' comes after '9')."""
    names = sorted(set(labels.tolist()))
    try:
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(names)


def _standardise(train: list[np.ndarray], test: list[np.ndarray]):
    """Both splits normalised with the training split's per-channel mean and std (over true steps)."""
    steps = np.concatenate(train)
    mean, std = steps.mean(axis=0), steps.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(s - mean) / std for s in train], [(s - mean) / std for s in test], mean, std


def _features(train: list[np.ndarray], test: list[np.ndarray], features: str):
    """The normalised input features of both splits (see the module docstring), and their statistics."""
    train, test, mean, std = _standardise(train, test)
    if features == "energy":
        train_sq, test_sq, mean_sq, std_sq = _standardise([z * z for z in train], [z * z for z in test])
        train = [np.concatenate(pair, axis=1) for pair in zip(train, train_sq)]
        test = [np.concatenate(pair, axis=1) for pair in zip(test, test_sq)]
        mean, std = np.concatenate([mean, mean_sq]), np.concatenate([std, std_sq])
    return train, test, mean, std


def _pad(seqs: list[np.ndarray], clip) -> tuple[np.ndarray, np.ndarray, int]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    x = np.zeros((len(seqs), int(lengths.max()), seqs[0].shape[1]))
    clipped = 0
    for i, z in enumerate(seqs):
        if clip is not None:
            clipped += int(np.count_nonzero(np.abs(z) > clip))
            z = np.clip(z, -clip, clip)
        x[i, : len(z)] = z
    return x, lengths, clipped


def load_dataset(name: str, max_length: int | None = None, clip: float | None = None,
                 features: str = "raw") -> Dataset:
    """Load aeon's classification set ``name`` (train and test), or generate ``DelayedRecall-<L>``
    (module docstring), normalised with training statistics.

    ``max_length``: the longest sequence the target accepts; longer ones are an error rather than
    silently truncated. ``clip``: bound on normalised values (e.g. the fixed-point input range), so
    every algorithm sees the same inputs; how many values it touched is kept in ``clipped``.
    ``features``: one of FEATURES (module docstring).
    """
    if features not in FEATURES:
        raise ValueError(f"unknown input features {features!r}; choose one of {', '.join(FEATURES)}")
    length = _recall_length(name)
    if length is not None:
        if max_length is not None and length > max_length:
            raise ValueError(f"data set {name!r} has sequences of {length} steps, "
                             f"longer than the maximum of {max_length}")
        train_seqs, train_labels, test_seqs, test_labels = _recall_splits(length)
        classes = tuple(str(c) for c in range(RECALL_CLASSES))
    else:
        train_seqs, train_labels, test_seqs, test_labels, classes = _aeon_splits(name, max_length)
    train_x, test_x, mean, std = _features(train_seqs, test_seqs, features)
    del train_seqs, test_seqs  # the raw arrays (generated: the largest) go before padding
    splits, clipped = [], 0
    for seqs, labels in ((train_x, train_labels), (test_x, test_labels)):
        x, lengths, n = _pad(seqs, clip)
        splits.append(Split(x, lengths, labels))
        clipped += n
    return Dataset(name, splits[0], splits[1], classes, mean, std, clipped, features)


def _aeon_splits(name: str, max_length: int | None):
    """aeon's set ``name``: raw train and test sequences, integer labels, the class names; checked."""
    names = _aeon_datasets()
    if name not in names:
        raise ValueError(f"unknown data set {name!r}; aeon ships these classification sets: {', '.join(names)}; "
                         f"or {_recall_family_hint()}")
    train_seqs, train_y = _load_split(name, "train")
    test_seqs, test_y = _load_split(name, "test")
    n_inputs = {s.shape[1] for s in train_seqs + test_seqs}
    if len(n_inputs) != 1:
        raise ValueError(f"data set {name!r} has samples with different channel counts {sorted(n_inputs)}")
    longest = max(len(s) for s in train_seqs + test_seqs)
    if max_length is not None and longest > max_length:
        raise ValueError(f"data set {name!r} has sequences of {longest} steps, longer than the maximum of {max_length}")
    classes = _class_order(train_y)
    unseen = sorted(set(test_y.tolist()) - set(classes))
    if unseen:
        raise ValueError(f"data set {name!r}: test labels {unseen} do not occur in the training split")
    index = {c: i for i, c in enumerate(classes)}
    labels = [np.array([index[c] for c in y], dtype=np.int64) for y in (train_y, test_y)]
    return train_seqs, labels[0], test_seqs, labels[1], classes
