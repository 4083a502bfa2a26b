import numpy as np

from ml_backend.state.labeled_set import ExpansionCache, build_labeled_set
from model.expansion import Expander, Expansion, SinglePixelExpander


class BlockExpander(Expander):
    """Expands a click to its 4x4 block, with a fixed confidence (a deterministic stand-in region)."""

    name = "block"

    def __init__(self, confidence=0.9, tau=0.5):
        super().__init__(tau)
        self.confidence, self.calls = confidence, 0

    def expand(self, image, row, col):
        self.calls += 1
        mask = np.zeros(image.shape[:2], dtype=bool)
        mask[row // 4 * 4: row // 4 * 4 + 4, col // 4 * 4: col // 4 * 4 + 4] = True
        return Expansion(mask, self.confidence)


def rows(*items, region: str = "r"):
    return [{"task": t, "pixel": p, "class": c, "source": s, "region": region} for t, p, c, s in items]


IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)


def test_annotators_win_conflicting_expansions_drop_and_cap_keeps_the_click(tmp_path):
    cache = ExpansionCache(tmp_path, BlockExpander())
    labeled = build_labeled_set(rows((1, 0, 2, "keypoint"), (1, 1, 5, "brush"), (1, 9, 3, "keypoint")),
                                lambda t: IMAGE, cache, region_cap=100)
    pixels, classes = labeled[1]
    got = dict(zip(pixels.tolist(), classes.tolist()))
    assert got[0] == 2 and got[1] == 5 and got[9] == 3  # clicks and brush keep their classes
    assert 2 not in got and 8 not in got  # claimed by both clicks' block with different classes: dropped
    capped = build_labeled_set(rows((1, 0, 2, "keypoint")), lambda t: IMAGE, ExpansionCache(tmp_path, BlockExpander()),
                               region_cap=3)
    assert len(capped[1][0]) == 3 and 0 in capped[1][0]


def test_low_confidence_keeps_the_single_pixel_and_expansions_are_cached(tmp_path):
    low = BlockExpander(confidence=0.1)
    labeled = build_labeled_set(rows((2, 18, 1, "keypoint")), lambda t: IMAGE, ExpansionCache(tmp_path, low), 100)
    assert labeled[2][0].tolist() == [18]
    expander = BlockExpander()
    cache = ExpansionCache(tmp_path / "c", expander)
    decoded = []
    for _ in range(2):
        build_labeled_set(rows((2, 18, 1, "keypoint")), lambda t: decoded.append(t) or IMAGE, cache, 100)
    assert expander.calls == 1 and decoded == [2]  # a cached region needs no image
    newest = build_labeled_set(rows((3, 4, 1, "keypoint"), (3, 4, 2, "keypoint")), lambda t: IMAGE, None, 100)
    assert newest[3][1].tolist() == [2]  # the later row (newer annotation) wins
    single = build_labeled_set(rows((3, 4, 1, "keypoint")), lambda t: IMAGE,
                               ExpansionCache(tmp_path / "n", SinglePixelExpander()), 100)
    assert single[3][0].tolist() == [4]


def test_a_newer_brush_region_relabels_all_of_a_clicks_region_and_trains_on_at_most_the_cap(tmp_path):
    """A reviewer paints over what a click became: every pixel of the stroke is theirs (none keeps the
    click's class by expansion), and the stroke gives REGION_PIXEL_CAP of them to training."""
    click = rows((1, 0, 2, "keypoint"), region="k1")  # expands to the 4x4 block of pixels 0-3, 8-11, ...
    block = [r * 8 + c for r in range(4) for c in range(4)]
    stroke = rows(*[(1, p, 6, "brush") for p in block + [4, 5]], region="fix")  # the whole block, and more
    labeled = build_labeled_set(click + stroke, lambda t: IMAGE, ExpansionCache(tmp_path, BlockExpander()),
                                region_cap=4)
    got = dict(zip(*(a.tolist() for a in labeled[1])))
    assert len(got) == 4 and set(got.values()) == {6}  # four of the stroke's pixels, none of the click's class
    assert set(got) <= set(block) | {4, 5}
    older = build_labeled_set(stroke + click, lambda t: IMAGE, ExpansionCache(tmp_path, BlockExpander()), 4)
    got = dict(zip(*(a.tolist() for a in older[1])))
    assert got[0] == 2 and {got[p] for p in got if p != 0} <= {6, 2}  # the click came later: its pixel is its own
    assert not any(got.get(p) == 2 for p in block[1:])  # its expansion never takes a stroke's pixel
