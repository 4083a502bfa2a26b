"""What annotators are told: the backend's tail of the instructions and the description is replaced,
the project's own text before it kept (the real Label Studio pages in test_connect_dialog.py)."""

from __future__ import annotations

from ml_backend.label_studio import round_notice as notice


def test_the_backends_tail_is_replaced_and_the_projects_own_text_kept():
    start = notice.INSTRUCTION_START
    first = notice.merged("<p>Our team's rules</p>", notice.instruction_block(notice.open_round(0, 3, 2)), start)
    assert first.startswith("<p>Our team's rules</p>\n<h3>") and "round 0 is open: 3 points on 2 tasks" in first
    later = notice.merged(first, notice.instruction_block(notice.computing(1, 0.0, None)), start)
    assert later.startswith("<p>Our team's rules</p>\n<h3>") and later.count(notice.INSTRUCTION_MARKER) == 1
    assert "round 0 is open" not in later and "round 1 is being computed since 00:00 UTC" in later
    assert notice.merged(None, "x", start) == "x" == notice.merged("", "x", start)
    described = notice.merged("CamVid street scenes", notice.description_line("round 2 is open"),
                              notice.DESCRIPTION_MARKER)
    assert described == "CamVid street scenes\nActive learning now: round 2 is open"
    assert notice.merged(described, notice.description_line("round 3"), notice.DESCRIPTION_MARKER) == \
        "CamVid street scenes\nActive learning now: round 3"


def test_the_computing_notice_says_about_when_from_the_last_rounds_time():
    text = notice.computing(4, 3600.0, 150.0)
    assert "round 4 is being computed since 01:00 UTC; expected about 01:02 UTC" in text
    assert "the last round took 2 min" in text and "press Label All Tasks again" in text
    assert "(the last round took 12 s from its last answer)" in notice.computing(4, 3600.0, 12.4)
    assert "the first points come a few minutes after connecting" in notice.computing(0, 0.0, None)
    assert "expected in a few minutes" in notice.computing(1, 0.0, None)
