"""`ainode eval --walk-check`: the segmenter and its slice walk on their own, from truth-placed starts.

The full evaluation scores the segmenter behind the detector: a lesion the detector misses is
never segmented, and one segmenter that finds better boxes can hide another failure. This check
places every lesion of ``min_mm`` or more where its truth says, twice (on its key slice, and on
its last slice, where a detector that fires on a lesion's small end would put it) and walks it as
the analyzer does (``walk_masks``). It measures what a segmenter does to large lesions, where a
mask that runs into the organ around it costs tens of millimetres of long axis: a few seconds on
40 patients, so candidate weights can be screened before the slower full evaluation.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from node.eval import metrics
from node.eval.cohort import EvalStudy
from node.inference.analyzer import Fit, SliceMask, walk_masks
from node.inference.backend import InferenceBackend
from node.inference.recist import measure_recist

#: Lesions at least this long (mm) are walked.
WALK_CHECK_MIN_MM = 25.0
#: A walk whose widest-slice Dice is below this lost its lesion (or followed something else).
LOST_DICE = 0.3
#: A long-axis error above this (mm) is counted as a leak or a cut-off.
GROSS_ERROR_MM = 10.0
STARTS = ("key", "end")


def walk_check(
    studies: Iterable[EvalStudy],
    backend: InferenceBackend,
    *,
    min_mm: float = WALK_CHECK_MIN_MM,
    tiles: list[WalkTile] | None = None,
) -> list[dict]:
    """One row per (lesion of ``min_mm`` or more, start): the walk's widest-slice Dice against the
    truth on that slice, and its long-axis error (mm, walked minus true; None without a mask).
    With ``tiles``, one ``WalkTile`` per row is appended there (for ``walk_png``)."""
    rows = []
    for study in studies:
        volume = study.volume
        # Each lesion's voxels once, for both starts.
        walks: dict[str, list[tuple[object, np.ndarray, Fit]]] = {start: [] for start in STARTS}
        for lesion in study.lesions:
            if lesion.long_axis_mm < min_mm:
                continue
            label = study.lesion_labels == lesion.label
            present = np.flatnonzero(label.any(axis=(1, 2)))
            if present.size == 0:
                continue
            for start, z in zip(STARTS, (lesion.key_slice, int(present.max())), strict=True):
                place = SliceMask.of(label[z])
                if place is None:
                    continue
                rr, cc = np.nonzero(label[z])
                fit = Fit(key_slice=z, center_rc=(float(rr.mean()), float(cc.mean())), size_mm=place.extent_mm(volume.spacing), box=None)
                walks[start].append((lesion, label, fit))
        for start in STARTS:
            if walks[start]:
                walked = walk_masks(backend, volume, [fit for _, _, fit in walks[start]])
                for (lesion, label, _), w in zip(walks[start], walked, strict=True):
                    rows.append(_score(study, lesion, label, w, start, tiles))
    return rows


@dataclass(frozen=True)
class WalkTile:
    """The walk's widest slice around one lesion: HU pixels, the truth and the walked mask."""

    pixels: np.ndarray
    truth: np.ndarray
    walked: np.ndarray


def _score(study: EvalStudy, lesion, label: np.ndarray, walked: dict, start: str, tiles: list[WalkTile] | None) -> dict:
    z = int(walked["key_slice"])
    off = walked["offset"]
    walked_key = SliceMask.of(walked["mask"][walked["key_m"]], off[1], off[2])  # None: the walk found nothing
    key = np.zeros(label.shape[1:], dtype=bool) if walked_key is None else walked_key.within(0, 0, label.shape[1:])
    truth = label[z]
    dice = metrics.dice(key, truth)
    axes = None if walked_key is None else measure_recist(key, study.volume.spacing[1:])
    if tiles is not None:
        either = truth | key
        rr, cc = np.nonzero(either if either.any() else label.any(axis=0))
        pad = max(8, int(0.5 * max(np.ptp(rr), np.ptp(cc))))
        r0, r1 = max(0, rr.min() - pad), min(key.shape[0], rr.max() + pad + 1)
        c0, c1 = max(0, cc.min() - pad), min(key.shape[1], cc.max() + pad + 1)
        tiles.append(WalkTile(study.volume.pixels[z, r0:r1, c0:c1].copy(), truth[r0:r1, c0:c1].copy(), key[r0:r1, c0:c1].copy()))
    return {
        "patient": study.patient,
        "timepoint": study.timepoint,
        "type": str(lesion.lesion_type),
        "appearance": lesion.appearance,
        "long_axis_mm": round(float(lesion.long_axis_mm), 1),
        "start": start,
        "dice": round(dice, 3),
        "long_axis_error_mm": None if axes is None else round(float(axes.long_axis_mm - lesion.long_axis_mm), 1),
    }


def summarize(rows: list[dict]) -> dict:
    """Per start, overall and per (type, appearance): lesions, mean Dice, long-axis MAE over the
    measured ones, lost walks and gross errors."""

    def figures(group: list[dict]) -> dict:
        errors = [abs(r["long_axis_error_mm"]) for r in group if r["long_axis_error_mm"] is not None]
        return {
            "lesions": len(group),
            "dice": float(np.mean([r["dice"] for r in group])) if group else None,
            "long_axis_mae_mm": float(np.mean(errors)) if errors else None,
            "lost": sum(r["dice"] < LOST_DICE for r in group),
            "gross_errors": sum(r["long_axis_error_mm"] is None or abs(r["long_axis_error_mm"]) > GROSS_ERROR_MM for r in group),
        }

    out: dict = {}
    for start in STARTS:
        group = [r for r in rows if r["start"] == start]
        by_kind: dict[str, list[dict]] = defaultdict(list)
        for r in group:
            by_kind[f"{r['type']} {r['appearance']}"].append(r)
        out[start] = {"all": figures(group), "by_kind": {k: figures(v) for k, v in sorted(by_kind.items())}}
    return out


def format_walk_check(summary: dict, min_mm: float) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [
        f"Segmenter slice walk from truth-placed starts, lesions of {min_mm:g} mm or more "
        "(synthetic-cohort figures, not clinical)",
        f"start 'key': the lesion's key slice; 'end': its last slice. lost: widest-slice Dice < {LOST_DICE}; "
        f"gross: no mask or long-axis error > {GROSS_ERROR_MM:g} mm",
        "",
        f"{'lesions':<32}{'start':<7}{'n':>4}{'Dice':>8}{'long MAE':>10}{'lost':>6}{'gross':>7}",
    ]
    for start in STARTS:
        part = summary[start]
        for name, f in [("all", part["all"]), *part["by_kind"].items()]:
            lines.append(
                f"{name:<32}{start:<7}{f['lesions']:>4}{num(f['dice'], '.3f'):>8}"
                f"{num(f['long_axis_mae_mm'], '.1f'):>8} mm{f['lost']:>6}{f['gross_errors']:>7}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def walk_png(rows: list[dict], tiles: list[WalkTile], *, worst: int = 12, tile_px: int = 180) -> bytes:
    """The ``worst`` walks by widest-slice Dice as one PNG: each the walk's widest slice (soft-tissue
    window), the truth outlined in green, the walked mask in red, captioned with what was walked."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    if len(rows) != len(tiles):
        raise ValueError(f"tiles: expected one per row ({len(rows)}), got {len(tiles)}")
    order = sorted(range(len(rows)), key=lambda i: rows[i]["dice"])[: max(1, worst)]
    cols = min(4, len(order))
    caption = 30
    sheet = Image.new("RGB", (cols * tile_px, ((len(order) + cols - 1) // cols) * (tile_px + caption)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for n, i in enumerate(order):
        tile, row = tiles[i], rows[i]
        grey = (np.clip((tile.pixels.astype(np.float32) + 160.0) / 400.0, 0, 1) * 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1)
        rgb[tile.walked] = (0.5 * rgb[tile.walked] + [127, 0, 0]).astype(np.uint8)
        edge = tile.truth & ~ndimage.binary_erosion(tile.truth)
        rgb[edge] = (0, 255, 0)
        scale = tile_px / max(rgb.shape[:2])
        image = Image.fromarray(rgb).resize((max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))), Image.NEAREST)
        x, y = (n % cols) * tile_px, (n // cols) * (tile_px + caption)
        sheet.paste(image, (x, y))
        err = row["long_axis_error_mm"]
        draw.text((x + 2, y + tile_px + 1), f"{row['patient']} t{row['timepoint']} {row['start']} {row['long_axis_mm']:.0f} mm", fill=(255, 255, 255))
        draw.text((x + 2, y + tile_px + 14), f"{row['type']} {row['appearance']} D{row['dice']:.2f} "
                  + ("no mask" if err is None else f"{err:+.0f} mm"), fill=(255, 255, 255))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
