"""Train and measure model/core/guard.py: "is this a frontal chest radiograph?" and "child or adult?".

    python -m training guard --kermany ../shared/data/kermany --nih ../shared/data/nih14 --out model/guard_params

Positives are the real radiographs of both data sets (radiographs.py); negatives are pictures generated here
(negatives.py: documents, screens, charts, colour photos, textures, CT/MRI/ultrasound-like slices, radiographs of
other body parts, gradients, noise) plus the photographs that ship inside scikit-image's wheel when it is
installed. Everything is split into train / val / test by group — patient for radiographs, source picture or seed
for negatives — the classifiers (fit.py) choose their thresholds on val only, and the rates written to
metrics.json are measured once on test (measure.py). build.py runs the whole job and writes guard.npz (a few
hundred kB) and metrics.json (rates, data, date, sha256 of guard.npz).
"""
from __future__ import annotations

from training.guard.build import train_guard

__all__ = ["train_guard", "main"]


def main(args) -> int:
    """`python -m training guard ...` (options in training/__main__.py)."""
    train_guard(args.kermany, args.nih, args.out, seed=args.seed, negatives_per_family=args.negatives_per_family,
                loo=not args.no_loo)
    return 0
