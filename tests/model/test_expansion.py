import multiprocessing as mp

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from model.datasets import IGNORE_INDEX, load_camvid
from model.embedding_cache import EmbeddingCache
from model.expansion import (SAM_DOWNLOADS, SEGMENTATIONS, WORKING_PIXELS, Prompt, SamExpander, SinglePixelExpander,
                             SuperpixelExpander, build_expander, import_segment_anything)
from model.experiments.expansion_report import boundary_recall
from tests.fixtures import sam_golden


def tiny_sam(seed=0):
    """The small SAM of the golden test (segment-anything's own modules) with seeded random weights."""
    import_segment_anything()
    from segment_anything import modeling

    torch.manual_seed(seed)
    return sam_golden.architecture(modeling)


@pytest.fixture(scope="module")
def image(camvid_root):
    return load_camvid(camvid_root, "val").image(3, 128)


def test_sam_tau_decides_between_region_and_single_pixel(image):
    sam = tiny_sam()
    probe = SamExpander(sam, tau=0.0).expand(image, 60, 70)
    assert probe.mask.shape == image.shape[:2] and probe.mask.dtype == bool
    inside = np.argwhere(probe.mask)
    row, col = inside[len(inside) // 2] if len(inside) else (60, 70)
    e = SamExpander(sam, tau=probe.confidence - 1e-3).expand(image, row, col)
    below = SamExpander(sam, tau=e.confidence - 1e-3)
    mask, conf, expanded = below.region(image, row, col)
    assert expanded == bool(e.mask[row, col]) and (np.array_equal(mask, e.mask) if expanded else mask.sum() == 1)
    above = SamExpander(sam, tau=e.confidence + 1e-3)
    mask, conf2, expanded = above.region(image, row, col)
    assert not expanded and mask.sum() == 1 and mask[row, col] and conf2 == pytest.approx(conf)


def test_sam_embeddings_are_cached_by_image_content(image):
    x = SamExpander(tiny_sam(), tau=0.5, cache_size=2)
    x.expand(image, 1, 1)
    x.expand(image, 100, 50)
    x.expand(image.copy(), 5, 5)  # same content, another array
    assert (x.cache.computed, x.cache.memory.hits) == (1, 2)
    x.expand(image[::-1].copy(), 5, 5)
    assert x.cache.computed == 2 and x.describe()["cache"]["memory_hits"] == 2


def test_sam_checkpoint_loading(tmp_path):
    build = import_segment_anything()
    torch.manual_seed(0)
    path = tmp_path / "sam_vit_b.pth"
    sam = build.sam_model_registry["vit_b"]()
    torch.save(sam.state_dict(), path)
    loaded = SamExpander.from_checkpoint(path, "vit_b", tau=0.7)
    assert loaded.tau == 0.7 and torch.equal(loaded.sam.mask_decoder.iou_token.weight, sam.mask_decoder.iou_token.weight)
    with pytest.raises(ValueError, match="SAM_MODEL_TYPE=vit_l"):
        SamExpander.from_checkpoint(path, "vit_l")
    with pytest.raises(FileNotFoundError, match=SAM_DOWNLOADS["vit_h"].replace(".", r"\.")):
        SamExpander.from_checkpoint(tmp_path / "missing.pth", "vit_h")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="could not be read"):
        SamExpander.from_checkpoint(cut, "vit_b")
    with pytest.raises(FileNotFoundError):
        build_expander("sam", sam_checkpoint=None)


def test_superpixel_region_is_connected_and_contains_the_click(image):
    e = SuperpixelExpander(tau=0.0)
    for row, col in [(10, 10), (64, 64), (120, 5)]:
        mask, conf, expanded = e.region(image, row, col)
        components, _ = ndimage.label(mask)
        assert expanded and mask[row, col] and components.max() == 1 and 0 <= conf <= 1 and mask.sum() > 1
    strict = SuperpixelExpander(tau=1.0)
    mask, _, expanded = strict.region(image, 64, 64)
    assert not expanded and mask.sum() == 1


def test_single_pixel_and_bad_clicks(image):
    mask, conf, expanded = SinglePixelExpander().region(image, 3, 4)
    assert mask.sum() == 1 and mask[3, 4] and conf == 1.0
    with pytest.raises(ValueError, match="outside"):
        SinglePixelExpander().region(image, 500, 4)
    with pytest.raises(ValueError):
        build_expander("magic")


# superpixels that follow the image --------------------------------------------------------------
@pytest.fixture(scope="module")
def street(camvid_root):
    """CamVid val 0016E5_07961.png at its own size (480 x 360, what a click sees) and its label map;
    the image where 78% of the old segments were 24 x 24 squares."""
    name = "0016E5_07961.png"
    image = np.asarray(Image.open(camvid_root / "val" / name).convert("RGB"))
    labels = np.asarray(Image.open(camvid_root / "valannot" / name)).astype(np.int64)
    return image, np.where(labels == 11, IGNORE_INDEX, labels)


def _is_rectangle(mask: np.ndarray) -> bool:
    rows, cols = np.nonzero(mask)
    return mask.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)


def test_superpixel_regions_are_not_grid_cells(street):
    image, _ = street
    expander = SuperpixelExpander(tau=0.0)
    h, w = image.shape[:2]
    regions = [expander.expand(image, int(r), int(c)).mask
               for r in np.linspace(5, h - 6, 7) for c in np.linspace(5, w - 6, 7)]
    rectangles = sum(_is_rectangle(m) for m in regions)
    assert rectangles <= 0.1 * len(regions), f"{rectangles} of {len(regions)} regions are filled rectangles"


def test_default_segmentation_finds_the_ground_truth_edges(street):
    """Boundary recall (label edges within 2 px of a segment boundary) on a real street scene at its
    own size: the old CIELAB-rescaled SLIC grid found 40% of them, Felzenszwalb finds 74%."""
    image, labels = street
    segments, _ = SuperpixelExpander().segments(image)
    h, w = image.shape[:2]
    sh, sw = segments.shape
    full = segments[(np.arange(h) * sh // h)[:, None], (np.arange(w) * sw // w)[None, :]]
    found, total = boundary_recall(full, labels)
    assert total > 5000 and found / total >= 0.65


@pytest.mark.parametrize("method", list(SEGMENTATIONS))
def test_every_method_segments_at_the_working_size(street, method):
    image, _ = street
    expander = SuperpixelExpander(tau=0.0, method=method)
    segments, lab = expander.segments(image)
    assert abs(segments.size - WORKING_PIXELS) < 0.01 * WORKING_PIXELS and lab.shape == segments.shape + (3,)
    assert segments.shape[1] / segments.shape[0] == pytest.approx(480 / 360, rel=0.01)
    assert 100 <= len(np.unique(segments)) <= 600
    mask, _, expanded = expander.region(image, 300, 50)
    assert expanded and mask.shape == image.shape[:2] and mask[300, 50]


def test_large_images_are_segmented_small_and_answered_at_their_size():
    rng = np.random.default_rng(0)
    image = np.zeros((3000, 4000, 3), dtype=np.uint8)
    image[:, 2000:] = 200  # two halves: a region never crosses the edge
    image += rng.integers(0, 8, image.shape, dtype=np.uint8)
    expander = SuperpixelExpander(tau=0.0)
    mask, _, expanded = expander.region(image, 1500, 2500)
    assert expander.segments(image)[0].shape == (222, 296)
    assert expanded and mask.shape == (3000, 4000) and mask[1500, 2500] and not mask[:, :1990].any()
    with pytest.raises(ValueError, match="unknown superpixel method"):
        SuperpixelExpander(method="watershed")


# prompts ------------------------------------------------------------------------------------------
def test_point_wise_prompt_unions_positives_removes_negatives_and_keeps_to_the_box(street):
    image, _ = street
    expander = SuperpixelExpander(tau=0.0)
    a, b = expander.region(image, 330, 240)[0], expander.region(image, 20, 240)[0]  # road, sky
    assert not (a & b).any()
    both, confidence, expanded = expander.prompt_region(image, Prompt(((330, 240, True), (20, 240, True))))
    assert expanded and np.array_equal(both, a | b) and 0 < confidence <= 1
    rows, cols = np.nonzero(b)
    inside = next((r, c) for r, c in zip(rows, cols) if (r, c) != (20, 240))
    less, _, _ = expander.prompt_region(image, Prompt(((330, 240, True), (20, 240, True), (*inside, False))))
    assert np.array_equal(less, a | _only(20, 240, a.shape))  # b removed, its click stays
    box = (200.0, 300.0, 280.0, 360.0)  # left, top, right, bottom
    boxed, _, _ = expander.prompt_region(image, Prompt(((330, 240, True),), box))
    assert boxed[330, 240] and boxed.sum() < a.sum() and not boxed[:300].any() and not boxed[:, :200].any()
    empty, confidence, expanded = expander.prompt_region(image, Prompt(box=box))
    assert not expanded and not empty.any() and confidence == 0.0
    with pytest.raises(ValueError, match="empty prompt"):
        expander.prompt_region(image, Prompt())
    with pytest.raises(ValueError, match="outside"):
        expander.prompt_region(image, Prompt(((360, 0, True),)))


def _only(row, col, shape):
    mask = np.zeros(shape, dtype=bool)
    mask[row, col] = True
    return mask


def _prompts_seen(sam):
    """What SAM's prompt encoder receives, call by call."""
    seen = []

    def hook(module, args, kwargs):
        points, boxes, masks = kwargs["points"], kwargs["boxes"], kwargs["masks"]
        seen.append({"coords": None if points is None else points[0][0].tolist(),
                     "labels": None if points is None else points[1][0].tolist(),
                     "box": None if boxes is None else boxes[0].tolist(),
                     "mask_input": None if masks is None else masks.clone()})

    sam.prompt_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_sam_replays_the_session_with_all_points_the_box_and_the_previous_mask(image):
    sam = tiny_sam()
    seen = _prompts_seen(sam)
    expander = SamExpander(sam, tau=0.0)
    h, w = image.shape[:2]  # 128 x 128, the encoder's 64: coordinates halve
    first = expander.expand_prompt(image, Prompt(((10, 20, True),)))
    assert seen[-1] == {"coords": [[10.25, 5.25]], "labels": [1], "box": None, "mask_input": None}
    session = Prompt(((10, 20, True), (100, 30, False), (60, 64, True)), box=(8.0, 4.0, 120.0, 110.0))
    seen.clear()
    refined = expander.expand_prompt(image, session)
    assert [s["labels"] for s in seen] == [[1], [1, 0], [1, 0, 1]]
    assert seen[2]["coords"] == [[10.25, 5.25], [15.25, 50.25], [32.25, 30.25]]
    assert all(s["box"] == [4.0, 2.0, 60.0, 55.0] for s in seen)
    low_res = (1, 1, *sam.prompt_encoder.mask_input_size)  # SAM's low-resolution logits (256 x 256 in vit_b)
    assert seen[0]["mask_input"] is None and all(s["mask_input"].shape == low_res for s in seen[1:])
    # each step refines the previous step's mask: its logits come back as the next step's mask_input
    step1, logits1 = expander._decode(expander.embedding(image), (h, w), session.points[:1], session.box, None)
    assert torch.equal(seen[1]["mask_input"], logits1)
    assert refined.mask.shape == (h, w) and 0 <= refined.confidence and first.mask.shape == (h, w)
    # the session's next click: one decoder pass, from the remembered logits of the last step
    seen.clear()
    longer = Prompt(session.points + ((90, 90, True),), session.box)
    fourth = expander.expand_prompt(image, longer)
    assert len(seen) == 1 and seen[0]["labels"] == [1, 0, 1, 1]
    # the answer depends on the prompt alone: a fresh expander (another process) replays all four steps
    fresh = tiny_sam()
    replayed = _prompts_seen(fresh)
    again = SamExpander(fresh, tau=0.0).expand_prompt(image, longer)
    assert len(replayed) == 4 and torch.equal(replayed[3]["mask_input"], seen[0]["mask_input"])
    assert np.array_equal(again.mask, fourth.mask) and again.confidence == pytest.approx(fourth.confidence)
    box_only = expander.expand_prompt(image, Prompt(box=(8.0, 4.0, 120.0, 110.0)))
    assert box_only.mask.shape == (h, w)


def test_sam_prompt_region_falls_back_to_the_positive_points(image):
    expander = SamExpander(tiny_sam(), tau=1.01)  # nothing passes
    mask, _, expanded = expander.prompt_region(image, Prompt(((10, 20, True), (100, 30, False), (60, 64, True))))
    assert not expanded and np.array_equal(np.argwhere(mask), [[10, 20], [60, 64]])


# embeddings shared by every process --------------------------------------------------------------
def _click_in_fresh_process(cache_dir: str, image: np.ndarray, row: int, col: int) -> dict:
    """Another process: a tiny SAM of the same weights answers one click; how often did its image
    encoder run?"""
    sam = tiny_sam()
    runs = []
    sam.image_encoder.register_forward_hook(lambda *_: runs.append(1))
    expander = SamExpander(sam, tau=0.0, cache_dir=cache_dir)
    e = expander.expand(image, row, col)
    return {"mask": e.mask, "confidence": e.confidence, "encoder_runs": len(runs), "cache": expander.cache.describe()}


def in_another_process(function, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def test_a_second_process_answers_from_the_embedding_on_disk(image, tmp_path):
    first = SamExpander(tiny_sam(), tau=0.0, cache_dir=tmp_path / "embeddings")
    first.prefetch(image)  # as the round's prefetch does, in an RQ worker
    here = first.expand(image, 40, 90)
    there = in_another_process(_click_in_fresh_process, str(tmp_path / "embeddings"), image, 40, 90)
    assert there["encoder_runs"] == 0 and there["cache"]["disk_hits"] == 1 and there["cache"]["computed"] == 0
    assert np.array_equal(there["mask"], here.mask) and there["confidence"] == pytest.approx(here.confidence)
    elsewhere = in_another_process(_click_in_fresh_process, str(tmp_path / "other"), image, 40, 90)
    assert elsewhere["encoder_runs"] == 1  # without the shared directory the encoder runs again
    assert np.array_equal(elsewhere["mask"], here.mask)  # fp16 in memory as on disk: the same mask either way
    files = list((tmp_path / "embeddings").rglob("*.npz"))
    assert len(files) == 1 and np.load(files[0])["embedding"].dtype == np.float16
    assert files[0].parent.name.startswith("sam-custom-")


def test_embedding_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used(tmp_path):
    images = [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(4)]
    calls = []

    def compute(image):
        calls.append(int(image[0, 0, 0]))
        return {"x": np.full(1000, image[0, 0, 0], dtype=np.float32), "ids": np.arange(3)}

    cache = EmbeddingCache(1, tmp_path, disk_bytes=10**9)
    cache.fetch(images[0], compute)
    one_file = next(tmp_path.glob("*.npz")).stat().st_size
    cache = EmbeddingCache(1, tmp_path, disk_bytes=int(2.5 * one_file))  # room for two
    for i in (1, 0, 2):  # 0 is read back from disk between: 1 is now the oldest
        out = cache.fetch(images[i], compute)
        assert out["x"].dtype == np.float16 and out["ids"].dtype == np.arange(3).dtype and out["x"][0] == i
    assert calls == [0, 1, 2] and cache.disk_hits == 1
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not list(tmp_path.glob("*.tmp"))
    fresh = EmbeddingCache(1, tmp_path, disk_bytes=int(2.5 * one_file))
    fresh.fetch(images[1], compute)  # evicted: computed again
    assert calls == [0, 1, 2, 1]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npz")) <= 2.5 * one_file


def test_embedding_cache_recomputes_an_unreadable_file(tmp_path):
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    cache = EmbeddingCache(1, tmp_path)
    cache.fetch(image, lambda im: {"x": np.ones(3)})
    path = next(tmp_path.glob("*.npz"))
    path.write_bytes(b"not a zip")
    fresh = EmbeddingCache(1, tmp_path)
    assert fresh.fetch(image, lambda im: {"x": np.full(3, 2.0)})["x"][0] == 2.0 and fresh.computed == 1
    assert np.load(path)["x"][0] == 2.0


def test_sam_prompts_give_what_segment_anythings_own_predictor_gave():
    """Against SamPredictor's masks and IoUs for the same small SAM, image and prompts (computed with
    torchvision, which cannot load here: tests/fixtures/sam_golden.py says how)."""
    import_segment_anything()
    from segment_anything import modeling

    golden = torch.load(sam_golden.FILE, weights_only=True)
    expander = SamExpander(sam_golden.build(modeling), tau=0.0)
    image = sam_golden.image()
    for (row, col), theirs in zip(sam_golden.CLICKS, golden["clicks"]):
        ours = expander.expand(image, row, col)
        best = int(theirs["iou"].argmax())
        assert ours.confidence == pytest.approx(float(theirs["iou"][best]), abs=1e-6)
        assert np.array_equal(ours.mask, theirs["masks"][best].numpy()) and 0 < ours.mask.sum() < ours.mask.size
    session = expander.expand_prompt(image, Prompt(sam_golden.SESSION, sam_golden.BOX))
    assert session.confidence == pytest.approx(float(golden["session"]["iou"][0]), abs=1e-6)
    assert np.array_equal(session.mask, golden["session"]["masks"][0].numpy())
