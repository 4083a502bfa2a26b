"""Any team's data in a plain folder layout, one directory per split:

    mydata/classes.txt             class names one per line in index order, and a line `void: 255`
    mydata/train/images/a.jpg      mydata/train/masks/a.png    (PNG or JPEG image, single-channel PNG mask)
    mydata/val/images/b.png        mydata/val/masks/b.png      (mask pixel = class index, or the void value)

`classes.json` may replace `classes.txt`: {"classes": ["sky", "road", ...], "void": 255}. An image
and its mask share a name up to the suffix. Images may differ in size from one another (each is
brought to the square on its own), but each mask must have its image's size. Masks are PNG only:
JPEG's lossy compression invents label values at every edge.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.datasets.segmentation import IGNORE_INDEX, SegmentationDataset, require_split, subdirectories

LAYOUT = "classes.txt or classes.json, and <split>/images/ with <split>/masks/ of the same names"
PREPROCESS = "resize"
CLASS_FILES = ("classes.txt", "classes.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TXT_EXAMPLE = "one class name per line in index order, and a line 'void: 255'"


def splits(root: Path) -> list[str]:
    return [d for d in subdirectories(root) if (root / d / "images").is_dir()]


def recognizes(root: Path) -> bool:
    return any((root / name).is_file() for name in CLASS_FILES) and bool(splits(root))


def read_classes(root: Path) -> tuple[tuple[str, ...], int]:
    """Class names in index order and the void value, from classes.txt or classes.json."""
    txt, js = root / "classes.txt", root / "classes.json"
    if txt.is_file():
        names, voids = [], []
        for line in txt.read_text().splitlines():
            line = line.strip()
            if line.lower().startswith("void:"):
                voids.append(line.split(":", 1)[1].strip())
            elif line:
                names.append(line)
        if len(voids) != 1:
            raise ValueError(f"{txt}: needs exactly one line 'void: <value>' (found {len(voids)}); "
                             f"format: {TXT_EXAMPLE}")
        source, void = txt, voids[0]
    elif js.is_file():
        try:
            spec = json.loads(js.read_text())
            names, void = spec["classes"], spec["void"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f'{js}: expected {{"classes": ["name", ...], "void": 255}} ({exc})') from None
        source = js
    else:
        raise FileNotFoundError(f"{root} has no classes.txt ({TXT_EXAMPLE}) or classes.json")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{source}: needs at least one class name")
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: a class name appears twice")
    try:
        void = int(void)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: the void value must be an integer, got {void!r}") from None
    if not len(names) <= void <= IGNORE_INDEX:
        raise ValueError(f"{source}: void must lie between {len(names)} (after the {len(names)} class indices) "
                         f"and {IGNORE_INDEX}, got {void}")
    return tuple(names), void


def _by_stem(directory: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in found:
                raise ValueError(f"{directory}: {found[path.stem].name} and {path.name} share the name {path.stem!r}")
            found[path.stem] = path
    return found


def _examples(names: list[str]) -> str:
    return ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")


def load(root: Path, split: str, preprocess: str = PREPROCESS) -> SegmentationDataset:
    root = Path(root)
    classes, void = read_classes(root)
    image_dir, mask_dir = root / split / "images", root / split / "masks"
    require_split("folder", split, splits(root), image_dir, mask_dir)
    images = _by_stem(image_dir, IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no PNG or JPEG images in {image_dir}")
    not_png = [p.name for p in mask_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")]
    if not_png:
        raise ValueError(f"{mask_dir}: masks must be PNG (JPEG compression changes label values): {_examples(not_png)}")
    masks = _by_stem(mask_dir, (".png",))
    no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if no_mask or no_image:
        problems = []
        if no_mask:
            problems.append(f"{len(no_mask)} images without a mask in {mask_dir} ({_examples(no_mask)})")
        if no_image:
            problems.append(f"{len(no_image)} masks without an image in {image_dir} ({_examples(no_image)})")
        raise ValueError("image and mask names do not match: " + "; ".join(problems))
    stems = sorted(images, key=lambda s: images[s].name)
    return SegmentationDataset(root.name, split, [images[s] for s in stems], [masks[s] for s in stems], classes,
                               void, preprocess)
