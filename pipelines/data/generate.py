"""Regenerates penguins.csv: a small synthetic, penguin-like classification set.

The pipeline's data must ship with the project (no download at run time). The
rows are drawn from per-class Gaussians loosely shaped like the Palmer
penguins measurements, with a categorical `island` feature so that Transform
builds a vocabulary (a table plus an asset file the export must carry).
Deterministic: `python pipelines/data/generate.py` rewrites the same file.
"""

import csv
import os
import random

SPECIES = [  # (culmen length, culmen depth, flipper length, body mass), islands
    ((38.8, 18.3, 190.0, 3700.0), ["Torgersen", "Biscoe", "Dream"]),
    ((48.8, 18.4, 196.0, 3730.0), ["Dream"]),
    ((47.5, 15.0, 217.0, 5080.0), ["Biscoe"]),
]
SPREAD = (2.6, 1.1, 6.5, 450.0)
ROWS_PER_SPECIES = 110


def main():
    rng = random.Random(20261124)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "penguins", "penguins.csv")
    rows = []
    for label, (means, islands) in enumerate(SPECIES):
        for _ in range(ROWS_PER_SPECIES):
            values = [round(rng.gauss(m, s), 1) for m, s in zip(means, SPREAD)]
            rows.append([label, rng.choice(islands)] + values)
    rng.shuffle(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["species", "island", "culmen_length_mm", "culmen_depth_mm",
                         "flipper_length_mm", "body_mass_g"])
        writer.writerows(rows)


if __name__ == "__main__":
    main()
