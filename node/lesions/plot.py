"""Per-patient chart: each tracked lesion's diameter over time, with the RECIST response (PNG)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["track_chart_png"]

PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]


def track_chart_png(patient: Mapping[str, Any], *, width: int = 800, height: int = 480) -> bytes:
    """Draw the long axis (mm) of each track at each time point, and the response per study.

    Parameters
    ----------
    patient:
        the mapping returned by :meth:`node.store.lesions.LesionStore.patient_tracks`.

    Returns
    -------
    bytes
        a PNG image.
    """
    if width < 200 or height < 150:
        raise ValueError("width: the chart needs at least 200 x 150 pixels")
    responses = list(patient.get("responses", []))
    studies: dict[str, tuple[int, str]] = {}
    for r in responses:
        studies[r["study_instance_uid"]] = (len(studies), r.get("time_point") or "")
    for track in patient.get("tracks", []):
        for lesion in track["lesions"]:
            studies.setdefault(lesion["study_instance_uid"], (len(studies), lesion.get("time_point") or ""))
    dates = {}
    for track in patient.get("tracks", []):
        for lesion in track["lesions"]:
            dates[lesion["study_instance_uid"]] = lesion.get("study_date")
    values = [
        les["long_axis_mm"] for t in patient.get("tracks", []) for les in t["lesions"] if les.get("long_axis_mm") is not None
    ]
    top = max(values + [10.0]) * 1.1

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, upper, lower = 60, width - 130, 40, height - 60
    draw.rectangle([left, upper, right, lower], outline=(0, 0, 0))
    draw.text((left, 10), "Lesion long axis (mm) per time point; RECIST 1.1 response above each study", fill=(0, 0, 0), font=font)
    for step in range(6):
        value = top * step / 5
        y = lower - (lower - upper) * step / 5
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((5, y - 6), f"{value:.0f}", fill=(0, 0, 0), font=font)
    n = max(len(studies), 1)

    def x_of(index: int) -> float:
        return left + (right - left) * (index + 0.5) / n

    category = {r["study_instance_uid"]: r["category"] for r in responses}
    for uid, (index, time_point) in studies.items():
        x = x_of(index)
        draw.line([x, lower, x, lower + 4], fill=(0, 0, 0))
        draw.text((x - 30, lower + 8), time_point[:14], fill=(0, 0, 0), font=font)
        if dates.get(uid):
            draw.text((x - 30, lower + 22), str(dates[uid]), fill=(90, 90, 90), font=font)
        if uid in category:
            draw.text((x - 20, upper + 4), str(category[uid]), fill=(200, 0, 0), font=font)
    for k, track in enumerate(patient.get("tracks", [])):
        colour = PALETTE[k % len(PALETTE)]
        points = sorted(
            (studies[les["study_instance_uid"]][0], les["long_axis_mm"])
            for les in track["lesions"]
            if les.get("long_axis_mm") is not None
        )
        xy = [(x_of(i), lower - (lower - upper) * v / top) for i, v in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        label = track.get("tracking_id") or "untracked"
        draw.text((right + 10, upper + 14 * k), f"{label}", fill=colour, font=font)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
