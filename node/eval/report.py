"""Targets, PASS/FAIL, and the printed table of an evaluation.

Every figure is a synthetic-cohort figure, never a clinical one; the table and the JSON say so.
"""

from __future__ import annotations

from dataclasses import dataclass

LABEL = "synthetic-cohort figures, not clinical"

#: Published real-data figure shown for context only: different data, different models.
REFERENCE = {
    "figure": "3DCE (Yan et al., MICCAI 2018): 85.65% sensitivity at 4 FPs per image on DeepLesion",
    "sensitivity_at_4fp": 0.8565,
    "note": "real CT (DeepLesion test set), different data: not comparable with the synthetic figures",
}


@dataclass(frozen=True, kw_only=True)
class Target:
    """One figure with its goal: ``path`` into the summary dict, ``at_least`` or ``at_most``."""

    name: str
    path: tuple[str, ...]
    goal: float
    higher_is_better: bool = True
    unit: str = ""

    def value(self, summary: dict) -> float | None:
        node: object = summary
        for key in self.path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return None if node is None else float(node)  # type: ignore[arg-type]

    def passed(self, value: float | None) -> bool:
        if value is None:
            return False
        return value >= self.goal if self.higher_is_better else value <= self.goal


TARGETS: tuple[Target, ...] = (
    Target(name="sensitivity at 4 FPs/image (key slices)", path=("detection", "key_slice", "sensitivity", "4.0"), goal=0.90),
    Target(name="segmentation Dice (matched lesions)", path=("segmentation", "dice"), goal=0.85),
    Target(name="RECIST long-axis MAE", path=("recist", "long_axis_mae_mm"), goal=1.5, higher_is_better=False, unit="mm"),
    Target(name="body-part score Spearman with z", path=("body_part", "spearman"), goal=0.98),
    Target(name="embedding type precision@5 (truth lesions)", path=("retrieval", "precision_at_5"), goal=0.90),
    Target(name="lesion-graph pairwise precision", path=("matching", "precision"), goal=0.95),
    Target(name="lesion-graph pairwise recall", path=("matching", "recall"), goal=0.95),
)


def apply_targets(summary: dict) -> list[dict[str, object]]:
    """The targets with each figure's value and PASS/FAIL, JSON-ready."""
    rows = []
    for target in TARGETS:
        value = target.value(summary)
        rows.append(
            {
                "name": target.name,
                "value": value,
                "goal": f"{'>=' if target.higher_is_better else '<='} {target.goal:g}{' ' + target.unit if target.unit else ''}",
                "result": "PASS" if target.passed(value) else "FAIL",
            }
        )
    return rows


def target_warnings(summary: dict) -> list[str]:
    """Targets this cohort cannot show met, whatever the models: type precision@5 whose ceiling
    (a perfect embedding's figure, below 1 when a type has fewer than 5 lesions in other
    patients) is under its goal."""
    target = next(t for t in TARGETS if t.path == ("retrieval", "precision_at_5"))
    ceiling = (summary.get("retrieval") or {}).get("ceiling")
    if ceiling is None or ceiling >= target.goal:
        return []
    return [
        f"type precision@5 cannot reach its target {target.goal:g} on this cohort: a perfect embedding would score "
        f"{ceiling:.3f} (some types have fewer than 5 lesions in other patients); judge that target on a larger "
        "cohort, e.g. `ainode eval --patients 30 --timepoints 2`"
    ]


def _fmt(value: object, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{' ' + unit if unit else ''}"
    return f"{value}{' ' + unit if unit else ''}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def format_table(result: dict) -> str:
    """The human-readable report of ``ainode eval`` (``result`` as written to JSON)."""
    s = result["summary"]
    det = s["detection"]
    lines = [
        f"ainode eval: {LABEL}",
        f"cohort: {result['cohort']['description']}",
        f"models: {', '.join(f'{k} {v}' for k, v in result['models'].items()) or 'unknown'}",
        f"studies analysed {s['studies_analysed']}/{s['studies']}; truth lesions {s['truth_lesions']}; "
        f"found {s['found_lesions']}; matched {s['matched_lesions']} ({s['lesion_match_criterion']})",
        "",
        "detection sensitivity at FPs per image (key slices; " + det["key_slice"]["criterion"] + "):",
        "  " + "  ".join(f"{r}: {_fmt(v)}" for r, v in det["key_slice"]["sensitivity"].items())
        + f"   ({det['key_slice']['images']} key images, {det['key_slice']['candidates']} candidates)",
        "detection sensitivity at FPs per volume (" + det["per_volume"]["criterion"] + "):",
        "  " + "  ".join(f"{r}: {_fmt(v)}" for r, v in det["per_volume"]["sensitivity"].items())
        + f"   ({det['per_volume']['images']} volumes, {det['per_volume']['candidates']} candidates)",
        zoom_line(det.get("detector_zoom")),
        f"segmentation Dice: {_fmt(s['segmentation']['dice'])}",
        f"RECIST MAE: long {_fmt(s['recist']['long_axis_mae_mm'], 'mm', 2)}, short {_fmt(s['recist']['short_axis_mae_mm'], 'mm', 2)}"
        f" ({s['recist']['without_measurement']} matched lesions without a measurement)",
        f"body-part score Spearman with z (mean per volume): {_fmt(s['body_part']['spearman'])}",
        f"body-part score across patients (all slices pooled, body-frame z): Spearman {_fmt(s['body_part'].get('spearman_pooled'))}, "
        f"z about a line through the score: SD {_fmt(s['body_part'].get('z_spread_mm'), 'mm', 0)} (reported: the embedder's z cue)",
    ]
    r = s["retrieval"]
    lines.append(
        f"retrieval, truth lesions (top 5, other patients; {r.get('lesions', 'n/a')} annotated lesions embedded from their key slice and box): "
        f"type precision@5 {_fmt(r['precision_at_5'])} (ceiling {_fmt(r.get('ceiling'))}), "
        f"location error {_fmt(r['location_error_mm'], 'mm', 1)}, size error {_fmt(r['size_error_mm'], 'mm', 1)}"
    )
    f = s.get("retrieval_found")
    if f is not None:
        lines.append(
            f"retrieval, found lesions (top 5, other patients; the {f['queries']} analyzer lesions matched to truth with another patient's in the gallery): "
            f"type precision@5 {_fmt(f['precision_at_5'])} (ceiling {_fmt(f.get('ceiling'))}), "
            f"location error {_fmt(f['location_error_mm'], 'mm', 1)}, size error {_fmt(f['size_error_mm'], 'mm', 1)}"
        )
    lines.append(
        f"type accuracy: kNN on the embedding (k=5, leave-one-patient-out) truth lesions {_fmt(s['type']['knn_accuracy'])}, "
        f"found lesions {_fmt(s['type'].get('knn_accuracy_found'))}; detector's own {_fmt(s['type']['detector_accuracy'])}"
    )
    m = s["matching"]
    lines.append(
        f"lesion graph (t1={m['t1']:g}, t2={m['t2']:g} from settings): pairwise precision {_fmt(m['precision'])}, recall {_fmt(m['recall'])}"
    )
    mt = s.get("matching_truth")
    if mt is not None:
        lines.append(
            f"  the same graph on every truth lesion's embedding ({mt['lesions']} lesions): pairwise precision {_fmt(mt['precision'])}, recall {_fmt(mt['recall'])}"
        )
    if m.get("tuned"):
        t = m["tuned"]
        lines.append(
            f"  tune_thresholds on this cohort would choose t1={t['t1']:g}, t2={t['t2']:g} "
            f"(precision {t['precision']:.3f}, recall {t['recall']:.3f}); settings NOT changed"
        )
    types = s.get("by_type")
    if types:
        lines += ["", "by lesion type (key-slice hits at any score kept for the FROC; long-axis error mean absolute / mean signed):"]
        for kind, r in types.items():
            lines.append(
                f"  {kind:<12} lesions {r['lesions']:>4}  key-slice hits {r['key_slice_hits_any_score']:>4}  found {r['found']:>4}  "
                f"Dice {_fmt(r['dice'])}  long axis {_fmt(r['long_axis_mae_mm'], digits=2)} / {_signed(r['long_axis_bias_mm'])} mm"
            )
    lines += ["", f"targets ({LABEL}):"]
    for row in result["targets"]:
        lines.append(f"  {row['result']:4}  {row['name']:<44} {_fmt(row['value']):>8}   target {row['goal']}")
    lines += ["", f"reference, different data: {REFERENCE['figure']} ({REFERENCE['note']})"]
    if result.get("warnings"):
        lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def zoom_line(zoom: float | None) -> str:
    """What the FROCs above count besides the canvas pass (setting ``detector_zoom``)."""
    if zoom is None or zoom <= 1.0:
        return "  candidates: the detector on the 2 mm canvas (no zoomed pass: detector_zoom 1)"
    return f"  candidates: the detector on the 2 mm canvas and its zoomed pass at {zoom:g}x (lesions under 10 mm, scores x0.5; detector_zoom)"
