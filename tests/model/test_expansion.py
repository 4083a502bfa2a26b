from functools import partial

import numpy as np
import pytest
import torch
from scipy import ndimage

from model.datasets import load_camvid
from model.expansion import (SAM_DOWNLOADS, SamExpander, SinglePixelExpander, SuperpixelExpander, build_expander,
                             import_segment_anything)


def tiny_sam(seed=0):
    """A SAM built from segment-anything's own modules, small enough for a CPU test."""
    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    return Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2,
                                      out_chans=16, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      use_rel_pos=True, global_attn_indexes=[0], window_size=4),
        prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=1, embedding_dim=16, mlp_dim=32, num_heads=2), transformer_dim=16, iou_head_depth=2,
            iou_head_hidden_dim=16),
    ).eval()


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
    assert (x.cache.misses, x.cache.hits) == (1, 2)
    x.expand(image[::-1].copy(), 5, 5)
    assert x.cache.misses == 2 and x.describe()["cache_hits"] == 2


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
