"""Pathfinder: is there a path between the two dots? (Linsley et al., 2018; LRA, Tay et al., 2021)

Each image holds several curvy dashed paths and two dots. In a positive image the dots sit at the
two ends of one path; in a negative image they sit at one end each of two different paths. The
other paths are distractors. Because paths are dashed and cross each other, deciding needs the
whole picture, and read as a sequence of pixel tokens (LRA's "Pathfinder-32": 32x32 = 1,024
tokens) the two dots are hundreds of positions apart.

The generator below is written for this project with numpy only and is seeded: a path is a
walk of unit steps whose heading turns by a Gaussian amount each step (``curvature`` radians),
bouncing off the border; it is drawn in dashes of ``dash`` pixels separated by ``gap`` pixels.
Dots are filled discs of radius ``dot_radius``. Positive and negative images have the same
number of paths and dots, so counting pixels does not reveal the label.

Inputs x: (size*size,) int64 pixel tokens (1 + intensity; background 1, ink 256);
labels y: () int64, 1 when the dots are connected.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from attnkit.tasks.base import Task, register_task
from attnkit.tasks.generated import draw_distinct
from attnkit.tasks.pixel_sequences import PIXEL_VOCAB_SIZE, image_to_pixel_tokens
from attnkit.tasks.splits import TensorPairDataset

__all__ = ["PathfinderStyle", "draw_path", "load_pathfinder", "pathfinder_image"]

INK = 255


class PathfinderStyle:
    """How images look; defaults follow Pathfinder-32's proportions."""

    def __init__(self, *, size: int = 32, path_steps: int = 24, num_distractors: int = 2,
                 curvature: float = 0.35, dash: int = 2, gap: int = 1,
                 dot_radius: float = 1.5) -> None:
        if size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {size}")
        if path_steps < 4:
            raise ValueError(f"path_steps must be >= 4, got {path_steps}")
        if num_distractors < 0:
            raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
        if dash < 1 or gap < 0:
            raise ValueError(f"need dash >= 1 and gap >= 0, got dash={dash}, gap={gap}")
        if curvature < 0 or dot_radius < 0:
            raise ValueError(f"curvature and dot_radius must be >= 0, got {curvature}, "
                             f"{dot_radius}")
        self.size, self.path_steps, self.num_distractors = size, path_steps, num_distractors
        self.curvature, self.dash, self.gap, self.dot_radius = curvature, dash, gap, dot_radius

    def as_dict(self) -> dict[str, float]:
        return dict(size=self.size, path_steps=self.path_steps,
                    num_distractors=self.num_distractors, curvature=self.curvature,
                    dash=self.dash, gap=self.gap, dot_radius=self.dot_radius)


def draw_path(rng: np.random.Generator, style: PathfinderStyle) -> np.ndarray:
    """(path_steps + 1, 2) float (row, col) points of one smooth random walk inside the image."""
    margin = 1.0 + style.dot_radius
    high = style.size - 1 - margin
    point = rng.uniform(margin, high, size=2)
    heading = rng.uniform(0, 2 * math.pi)
    points = [point.copy()]
    for _ in range(style.path_steps):
        heading += rng.normal(0.0, style.curvature)
        step = np.array([math.sin(heading), math.cos(heading)])
        nxt = point + step
        for axis in range(2):  # bounce: mirror the heading's component that would leave
            if not margin <= nxt[axis] <= high:
                step[axis] = -step[axis]
        heading = math.atan2(step[0], step[1])
        point = np.clip(point + step, margin, high)
        points.append(point.copy())
    return np.stack(points)


def _stamp_dashes(image: np.ndarray, points: np.ndarray, style: PathfinderStyle) -> None:
    period = style.dash + style.gap
    for index, (row, col) in enumerate(points):
        if index % period < style.dash:
            image[round(row), round(col)] = INK


def _stamp_dot(image: np.ndarray, centre: np.ndarray, radius: float) -> None:
    rows, cols = np.ogrid[:image.shape[0], :image.shape[1]]
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2 + 0.5
    image[disc] = INK


def pathfinder_image(rng: np.random.Generator, connected: bool,
                     style: PathfinderStyle | None = None) -> np.ndarray:
    """One (size, size) uint8 image; the dots are joined by a path exactly when ``connected``."""
    style = style or PathfinderStyle()
    image = np.zeros((style.size, style.size), dtype=np.uint8)
    paths = [draw_path(rng, style) for _ in range(2 + style.num_distractors)]
    for path in paths:
        _stamp_dashes(image, path, style)
    first, second = paths[0], paths[1]
    ends = (first[0], first[-1]) if connected else (first[0], second[-1])
    for end in ends:
        _stamp_dot(image, end, style.dot_radius)
    return image


@register_task("pathfinder", "Pathfinder-style images as pixel tokens: are the dots joined? "
                             "(generated)")
def load_pathfinder(*, num_train: int = 20000, num_val: int = 2000, num_test: int = 2000,
                    size: int = 32, path_steps: int = 24, num_distractors: int = 2,
                    curvature: float = 0.35, dash: int = 2, gap: int = 1,
                    dot_radius: float = 1.5, seed: int = 0,
                    max_examples: int | None = None) -> Task:
    """Generate a balanced Pathfinder set; no image repeats within or across splits.

    Args:
        num_train, num_val, num_test: split sizes.
        size: image side in pixels (the sequence is ``size * size`` tokens).
        path_steps: unit steps per path (its length in pixels).
        num_distractors: paths besides the two that carry the dots.
        curvature: standard deviation of the heading change per step, radians.
        dash, gap: pixels drawn / skipped along a path.
        dot_radius: radius of the two dots, pixels.
        seed: generator seed.
        max_examples: cap every split at this many examples.
    """
    style = PathfinderStyle(size=size, path_steps=path_steps, num_distractors=num_distractors,
                            curvature=curvature, dash=dash, gap=gap, dot_radius=dot_radius)
    sizes = [num_train, num_val, num_test]
    if max_examples is not None:
        sizes = [min(s, max_examples) for s in sizes]

    def sample(rng: np.random.Generator) -> tuple[np.ndarray, int]:
        label = int(rng.integers(2))
        return pathfinder_image(rng, bool(label), style), label

    splits = draw_distinct(sample, lambda ex: tuple(ex[0].tobytes()), sizes, seed,
                           task="pathfinder")
    datasets = []
    for split in splits:
        images = np.stack([image for image, _ in split])  # (N, size, size) uint8
        labels = torch.tensor([label for _, label in split], dtype=torch.long)
        datasets.append(TensorPairDataset(image_to_pixel_tokens(images), labels))
    length = size * size
    return Task(name="pathfinder", kind="classification", modality="tokens",
                train=datasets[0], val=datasets[1], test=datasets[2], num_classes=2,
                vocab_size=PIXEL_VOCAB_SIZE, input_shape=(length,), pad_id=0,
                source=f"generated (Pathfinder-style, attnkit's numpy generator, seed {seed})",
                extra={"style": style.as_dict(), "image_shape": (size, size),
                       "max_length": length, "max_input_length": length})
