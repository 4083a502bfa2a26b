import pytest

from ml_backend.label_studio.click_prompt import ContextError, click_session
from ml_backend.label_studio.label_config import SHIPPED_CONFIG, LabelConfigError, parse_label_config

SCHEMA = parse_label_config(SHIPPED_CONFIG.read_text())


def point(x, y, label="Road", positive=None, control="query"):
    region = {"id": f"p{x}-{y}", "from_name": control, "to_name": "image", "type": "keypointlabels",
              "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label] if label else []}}
    if positive is not None:
        region["is_positive"] = positive
    return region


def box(x, y, width, height, label="Road", rotation=0.0):
    return {"id": f"b{x}", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": x, "y": y, "width": width, "height": height, "rotation": rotation,
                      "rectanglelabels": [label]}}


def test_the_shipped_config_has_the_optional_box_and_foreign_labels_are_refused():
    assert SCHEMA.rectangle_name == "box"
    text = SHIPPED_CONFIG.read_text()
    without = text[:text.index("  <RectangleLabels")] + text[text.index("</RectangleLabels>") + 18:]
    assert parse_label_config(without).rectangle_name is None
    foreign = text.replace('<Label value="Sky" background="#808080"/>\n  </RectangleLabels>', "", 1).replace(
        "</RectangleLabels>", '<Label value="Dog"/></RectangleLabels>')
    with pytest.raises(LabelConfigError, match="not classes: Dog"):
        parse_label_config(foreign)


def test_a_session_is_every_point_and_the_newest_box_of_the_newest_class():
    session = click_session([point(10, 20), point(50, 50, "Car"), point(30, 40, positive=False), box(1, 2, 3, 4),
                             box(20, 30, 40, 50), point(60, 75, positive=True)], SCHEMA)
    assert session.cls == SCHEMA.classes.index("Road") and session.newest == "p60-75"
    assert session.points == ((10, 20, True), (30, 40, False), (60, 75, True))  # the car is another object
    prompt = session.prompt(480, 360)
    assert prompt.points == ((72, 48, True), (144, 144, False), (270, 288, True))
    assert prompt.box == (96.0, 108.0, 288.0, 288.0)
    car = click_session([point(10, 20), point(50, 50, "Car")], SCHEMA)
    assert car.cls == SCHEMA.classes.index("Car") and car.points == ((50, 50, True),) and car.box is None
    at_the_edge = click_session([point(100, 100)], SCHEMA).prompt(480, 360)
    assert at_the_edge.points == ((359, 479, True),)


def test_a_rotated_box_prompts_with_its_bounds_and_other_controls_are_ignored():
    turned = click_session([box(10, 10, 20, 10, rotation=90)], SCHEMA).prompt(100, 100)
    assert turned.points == () and turned.box == pytest.approx((0.0, 10.0, 10.0, 30.0))
    session = click_session([point(10, 20, control="other"), point(30, 40)], SCHEMA)
    assert session.points == ((30, 40, True),)
    no_box = parse_label_config(SHIPPED_CONFIG.read_text().replace("RectangleLabels", "PolygonLabels"))
    with pytest.raises(ContextError, match="no keypoint click$"):
        click_session([box(1, 2, 3, 4)], no_box)


@pytest.mark.parametrize("regions, message", [
    ([], "no keypoint click or box"),
    ([point(10, 20, label=None)], "pick a label"),
    ([point(10, 20, label="Dog")], "unknown class 'Dog'"),
    ([point(10, 120)], "'y' = 120.0 lies outside"),
    ([{**point(10, 20), "value": {"keypointlabels": ["Road"]}}], "'x' is missing"),
    ([box(10, 20, 0, 5)], "'width' = 0.0 lies outside"),
])
def test_unusable_sessions_say_why(regions, message):
    with pytest.raises(ContextError, match=message):
        click_session(regions, SCHEMA)


def test_a_box_beyond_the_image_is_refused_once_the_size_is_known():
    with pytest.raises(ContextError, match="outside the image"):
        click_session([box(100, 50, 5, 5)], SCHEMA).prompt(480, 360)
