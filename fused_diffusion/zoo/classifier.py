"""The small CNN whose features define the digits-domain quality metric (fd.metrics), and its training."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import NATIVE_RESOLUTION, load_digits_split
from .. import files
from .store import WEIGHTS_DIR

FEATURES = 64
CLASSIFIER_WEIGHTS = WEIGHTS_DIR / "digits_classifier.safetensors"


class DigitsClassifier(nn.Module):
    """8x8 digit in [-1, 1] -> 10 logits; `features` is the 64-d hidden layer the Frechet distance is taken in."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(nn.Dropout(0.3), nn.Linear(64 * 4 * 4, FEATURES), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, 10))

    def features(self, images: Tensor) -> Tensor:
        shape = (1, NATIVE_RESOLUTION, NATIVE_RESOLUTION)
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(f"images must have shape [N, {', '.join(map(str, shape))}], got {tuple(images.shape)}")
        return self.hidden(self.convs(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def random_shift(images: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Each image translated by up to max_shift pixels in x and y (background -1 fills the border)."""
    n, _, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def accuracy(classifier: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (classifier.eval()(images).argmax(1) == labels).float().mean().item()


def train_classifier(epochs: int = 60, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                     progress: bool = True) -> tuple[DigitsClassifier, float]:
    """Trains on the train split with one-pixel random shifts; returns the classifier and its held-out accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    split = load_digits_split()
    classifier = DigitsClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(split.train_labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    for _ in tqdm(range(epochs), desc="digits classifier", unit="epoch", disable=not progress):
        classifier.train()
        order = torch.randperm(len(split.train_labels), generator=generator)
        for batch in order.split(batch_size):
            images = random_shift(split.train_images[batch], generator)
            loss = F.cross_entropy(classifier(images), split.train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return classifier.eval(), accuracy(classifier, split.heldout_images, split.heldout_labels)


def save_classifier(classifier: DigitsClassifier, heldout_accuracy: float, path=CLASSIFIER_WEIGHTS, **info) -> None:
    files.save(path, classifier.state_dict(), files.CLASSIFIER, info={"heldout_accuracy": heldout_accuracy, **info})


def load_classifier(path=CLASSIFIER_WEIGHTS) -> tuple[DigitsClassifier, dict]:
    """(classifier in eval mode without gradients, its training info incl. 'heldout_accuracy')."""
    tensors, metadata = files.read(path, files.CLASSIFIER)
    classifier = DigitsClassifier()
    classifier.load_state_dict(tensors)
    return classifier.eval().requires_grad_(False), metadata.get("info", {})
