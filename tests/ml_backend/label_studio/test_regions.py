import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml_backend.label_studio.label_config import SHIPPED_CONFIG, parse_label_config
from ml_backend.label_studio.regions import (RegionError, brush_region, labels_from_result, query_region, mask_from_brush,
                                percent_from_pixel, pixel_from_percent)

SCHEMA = parse_label_config(SHIPPED_CONFIG.read_text())


@given(pixel=st.integers(0, 64 * 64 - 1))
def test_query_pixels_survive_the_round_trip_through_percent(pixel):
    x, y = percent_from_pixel(pixel, 64)
    assert pixel_from_percent(x, y, 64) == pixel


def test_percent_edges_and_outside():
    assert pixel_from_percent(100, 100, 64) == 64 * 64 - 1 and pixel_from_percent(0, 0, 64) == 0
    with pytest.raises(RegionError):
        pixel_from_percent(-0.1, 5, 64)


def test_brush_region_round_trip_at_original_size():
    mask = np.zeros((36, 48), dtype=bool)
    mask[5:20, 10:30] = True
    region = brush_region("r1", mask, 3, SCHEMA, 0.9)
    assert region["value"]["brushlabels"] == ["Road"] and region["to_name"] == "image" and region["score"] == 0.9
    assert np.array_equal(mask_from_brush(region["value"], 48, 36), mask)
    with pytest.raises(RegionError):
        mask_from_brush(region["value"], 40, 36)
    with pytest.raises(RegionError):
        mask_from_brush({"rle": [1, 2, 3]}, 48, 36)


def test_annotation_results_to_labels():
    mask = np.zeros((360, 480), dtype=bool)
    mask[:180, :] = True  # top half of the image
    brush = brush_region("b1", mask, 0, SCHEMA)
    accepted = {**brush_region("b2", mask, 1, SCHEMA), "origin": "prediction"}  # model output, unchanged
    query = query_region("k1", 65, 16, SCHEMA, 480, 360)
    kp = {**query, "value": {**query["value"], "keypointlabels": ["Car"]}}  # the annotator gave it a class
    untouched = query_region("k2", 66, 16, SCHEMA, 480, 360, suggestion="Model suggests: Road")
    negative = {**kp, "id": "k3", "is_positive": False}  # an Alt-click prompt: not a label of its pixel
    parsed = labels_from_result([kp, brush, accepted, "junk", untouched, negative], SCHEMA, task=3, resolution=16)
    assert parsed.problems == ["region 3 is not an object"]
    assert parsed.pending == ["k2"]  # still the placeholder: no label, the query stays open
    kps = [lb for lb in parsed.labels if lb.source == "keypoint"]
    strokes = [lb for lb in parsed.labels if lb.source == "brush"]
    assert [(lb.pixel, lb.cls, lb.region) for lb in kps] == [(65, 8, "k1")]
    # every pixel the stroke covers, the top half (the training set caps it: test_labeled_set.py)
    assert sorted(lb.pixel for lb in strokes) == list(range(8 * 16)) and all(lb.cls == 0 for lb in strokes)


def test_config_errors_name_what_is_missing():
    from ml_backend.label_studio.label_config import LabelConfigError

    with pytest.raises(LabelConfigError, match="not valid XML"):
        parse_label_config("<View><Image")
    with pytest.raises(LabelConfigError, match="KeyPointLabels"):
        parse_label_config('<View><Image name="i" value="$image"/></View>')
    text = SHIPPED_CONFIG.read_text()
    last = text.rindex('<Label value="Bicyclist"', 0, text.index("</BrushLabels>"))
    mismatch = text[:last] + text[last:].replace('<Label value="Bicyclist" background="#0080C0"/>', "", 1)
    with pytest.raises(LabelConfigError, match="only in KeyPointLabels: Bicyclist"):
        parse_label_config(mismatch)
    assert SCHEMA.classes[3] == "Road" and SCHEMA.image_key == "image" and SCHEMA.smart_keypoints


def test_query_points_carry_the_placeholder_never_a_class():
    plain = query_region("q", 65, 16, SCHEMA, 480, 360)
    assert plain["value"]["keypointlabels"] == ["Label me"] and "meta" not in plain
    suggested = query_region("q", 65, 16, SCHEMA, 480, 360, suggestion="Model suggests: Car")
    assert suggested["value"]["keypointlabels"] == ["Label me"] and suggested["meta"] == {"text": ["Model suggests: Car"]}
    assert "Label me" not in SCHEMA.classes and SCHEMA.placeholder == "Label me"


def test_the_placeholder_is_required_and_is_no_class():
    from ml_backend.label_studio.label_config import LabelConfigError

    text = SHIPPED_CONFIG.read_text()
    without = text.replace('<Label value="Label me" background="#FF00FF" hint="A query point: select it and give it '
                           'its class"/>', "")
    assert without != text
    with pytest.raises(LabelConfigError, match="placeholder"):
        parse_label_config(without)
    in_brush = text.replace('<BrushLabels name="mask" toName="image">',
                            '<BrushLabels name="mask" toName="image"><Label value="Label me"/>')
    with pytest.raises(LabelConfigError, match="not a class"):
        parse_label_config(in_brush)
    with pytest.raises(LabelConfigError, match="placeholder"):
        SCHEMA.class_index("Label me")


def test_label_studio_sdk_accepts_what_the_backend_sends_and_rejects_a_wrong_label():
    from label_studio_sdk.label_interface import LabelInterface

    from tests.ml_backend.sdk_checks import assert_valid_result

    config = SHIPPED_CONFIG.read_text()
    mask = np.zeros((36, 48), dtype=bool)
    mask[5:20, 10:30] = True
    point = query_region("q0-1-5", 5, 64, SCHEMA, 480, 360, suggestion="Road")
    assert_valid_result(config, [point, brush_region("b1", mask, 3, SCHEMA, 0.9), brush_region("b2", ~mask, 0, SCHEMA)])
    wrong = {**point, "value": {**point["value"], "keypointlabels": ["Road surface"]}}
    assert LabelInterface(config).validate_prediction({"result": [wrong]}) is False
