"""What annotators are told, where they look: the instructions Label Studio shows on the labeling page
and the project's description.

Between two rounds the queue is empty for minutes and Label Studio says only "No More Tasks Left in
Queue"; so when the last answer of a round is in, both places say that the next round is being
computed and about when it comes (the last round's measured time from last answer to queries),
and when it opens, how many points wait. The backend owns the tail of each text, from its own
heading (instructions) or its own first words (description) to the end; what the project had
before it is kept.
"""

from __future__ import annotations

import time

INSTRUCTION_MARKER = "Active learning: label the magenta points"
# the labeling page's header on a query task (its data's `query_instruction`, which image tasks lack)
QUERY_HEADER = ("Give each magenta 'Label me' point its class: select it, then pick a label above the image. "
                "Delete a point you cannot label.")
STEPS = (
    "<p>Each task shows an image with a few magenta points labeled <b>Label me</b>. The model needs the "
    "class of exactly those pixels.</p>"
    "<ol><li>Select a point (click it, or pick it in the Regions list).</li>"
    "<li>Give it its class: click a label or press its hotkey.</li>"
    "<li>Delete a point you cannot label (void, unclear): select it and press Backspace.</li>"
    "<li>Submit.</li></ol>"
    "<p>A point still labeled <b>Label me</b> when you submit stays open and comes back on a new task. "
    "<b>Skip</b> dismisses the task's points for everyone: nobody is asked them again.</p>"
    "<p>To see what a click becomes before you submit, turn on <b>Auto-Annotation</b> (the toggle in the "
    "bar under the image), pick the smart keypoint tool and click a pixel of a class: the backend "
    "answers with the region that click grows into. Once a task's answers are taken in, that region of "
    "every labeled point is shown on the task as the prediction <i>expanded-clicks</i>, for review.</p>")
INSTRUCTION_START = f"<h3>{INSTRUCTION_MARKER}"
DESCRIPTION_MARKER = "Active learning now:"


def clock(at: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(at))


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def computing(round_index: int, started: float, expected_seconds: float | None) -> str:
    if expected_seconds is not None:
        when = (f"expected about {clock(started + expected_seconds)} (the last round took "
                f"{duration(expected_seconds)} from its last answer)")
    else:
        when = "the first points come a few minutes after connecting" if round_index == 0 else \
            "expected in a few minutes"
    return (f"round {round_index} is being computed since {clock(started)}; {when}. Until then the queue is "
            f"empty (\"No More Tasks Left in Queue\"): press Label All Tasks again then.")


def open_round(round_index: int, points: int, tasks: int) -> str:
    return f"round {round_index} is open: {points} points on {tasks} tasks. Press Label All Tasks."


def instruction_block(status: str) -> str:
    return f"<h3>{INSTRUCTION_MARKER}</h3><p><b>Now:</b> {status}</p>{STEPS}"


def description_line(status: str) -> str:
    return f"{DESCRIPTION_MARKER} {status}"


def merged(existing: str | None, block: str, start: str) -> str:
    """`existing` with the backend's tail (from `start` on) replaced by `block`."""
    existing = existing or ""
    cut = existing.find(start)
    own = (existing[:cut] if cut >= 0 else existing).rstrip()
    return f"{own}\n{block}" if own else block
