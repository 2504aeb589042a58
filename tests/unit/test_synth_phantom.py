"""The synthetic phantom: determinism, geometry, lesion truth and DICOM validity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from synth_helpers import dciodvfy_errors

from node.lesions.records import LesionType
from node.synth.phantom import ScanParams, synthesize_study
from node.synth.truth import ORGAN_LABELS
from node.synth.writer import write_ct_series


@pytest.fixture(scope="module")
def study():
    return synthesize_study(3, 0, scan=ScanParams.small())


def test_small_study_shapes_and_identifiers(study):
    n, r, c = study.hu.shape
    assert (r, c) == (128, 128) and 60 <= n <= 200
    assert study.hu.dtype == np.int16
    assert study.organ_labels.shape == study.hu.shape and study.organ_labels.dtype == np.uint8
    assert study.lesion_labels.shape == study.hu.shape and study.lesion_labels.dtype == np.uint16
    assert study.patient_id == "SYN0003"
    assert study.spacing == (5.0, 3.3, 3.3)
    assert np.allclose(study.slice_z()[1] - study.slice_z()[0], 5.0)


def test_same_seed_same_study_and_follow_up_differs(study):
    again = synthesize_study(3, 0, scan=ScanParams.small())
    assert np.array_equal(again.hu, study.hu)
    assert again.study_instance_uid == study.study_instance_uid
    later = synthesize_study(3, 1, scan=ScanParams.small())
    assert later.study_instance_uid != study.study_instance_uid
    assert later.study_date > study.study_date
    assert later.pose != study.pose
    tracks = {lesion.track_id for lesion in study.lesions} & {lesion.track_id for lesion in later.lesions}
    assert tracks, "follow-up shares no lesion track with the baseline"


def test_hu_of_organs_is_plausible(study):
    def median(name):
        return float(np.median(study.hu[study.organ_labels == ORGAN_LABELS[name]]))

    assert -920 < median("lung") < -700
    assert 80 < median("liver") < 140
    assert median("spine") > 150
    assert -140 < median("subcutaneous_fat") < -60
    assert median("background") < -900


def test_lesion_truth_matches_its_mask(study):
    assert study.lesions
    for lesion in study.lesions:
        mask = study.lesion_mask(lesion)
        assert mask.any()
        counts = mask.sum(axis=(1, 2))
        assert counts[lesion.key_slice] == counts.max()
        assert 3.0 <= lesion.long_axis_mm <= 110.0
        assert lesion.short_axis_mm <= lesion.long_axis_mm
        (c0, r0), (c1, r1) = lesion.long_axis_endpoints
        length = np.hypot((c1 - c0) * study.spacing[2], (r1 - r0) * study.spacing[1])
        assert length == pytest.approx(lesion.long_axis_mm, rel=1e-6)
        assert isinstance(lesion.lesion_type, LesionType)
        box = lesion.box
        assert box[0] < box[2] and box[1] < box[3]
        assert lesion.volume_mm3 > 0


def test_written_series_is_a_valid_ct_image(tmp_path: Path):
    study = synthesize_study(5, 1, scan=ScanParams(rows=256, columns=256, num_slices=4))
    paths = write_ct_series(study, tmp_path)
    assert len(paths) == 4
    ds = pydicom.dcmread(paths[0])
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(hu.astype(np.int16), study.hu[0])
    assert ds.ImagePositionPatient[2] == pytest.approx(study.slice_z()[0], abs=1e-3)
    assert dciodvfy_errors(paths[0]) == []


def test_lesions_keep_apart_and_lung_lesions_stay_in_the_lung():
    """Over 40 patients' eight timepoints: no two lesions within 3 mm of each other (as spheres
    with lobes) while both are present, no lung lesion reaching into the heart, mediastinum or
    aorta; and the patient's stream still gives several lesions each."""
    from node.synth.anatomy import build_anatomy
    from node.synth.lesions import GAP_MM, LUNG_EXCLUDES, _reach, draw_tracks

    counts = []
    for patient in range(40):
        prng = np.random.default_rng([0, patient, 0])
        anatomy = build_anatomy(prng)
        tracks = draw_tracks(anatomy, prng, timepoints=8, liver_hu=anatomy.named["liver"].hu)
        counts.append(len(tracks))
        assert [t.track for t in tracks] == list(range(1, len(tracks) + 1))
        for i, a in enumerate(tracks):
            ra = _reach(a, 8)
            if a.lesion_type is LesionType.LUNG:
                assert not any(anatomy.named[s].contains(a.center, float(ra.max())) for s in LUNG_EXCLUDES)
            for b in tracks[i + 1 :]:
                rb = _reach(b, 8)
                gap = np.linalg.norm(np.subtract(a.center, b.center)) - ra - rb
                assert np.all(gap[(ra > 0) & (rb > 0)] >= GAP_MM), (patient, a.track, b.track)
    assert min(counts) >= 2 and np.mean(counts) > 4


@pytest.mark.parametrize("old, new", [(1, 2), (2, 3)])
def test_older_cohort_versions_are_kept_for_the_models_trained_on_them(old, new):
    """An older version (``ainode train --cohort-version N``) places lesions as before the next
    one's fix: a patient with a lesion the new version redraws differs between the versions, one
    without is the same."""
    from node.synth.anatomy import build_anatomy
    from node.synth.lesions import _clashes, draw_tracks

    same = differ = 0
    for patient in range(12):
        a, b = (synthesize_study(patient, 0, small=True, cohort_version=v) for v in (old, new))
        prng = np.random.default_rng([0, patient, 0])
        anatomy = build_anatomy(prng)
        tracks = draw_tracks(anatomy, prng, timepoints=8, liver_hu=anatomy.named["liver"].hu, version=old)
        if any(_clashes(t, anatomy, tracks[:i], 8, new) for i, t in enumerate(tracks)):
            differ += 1
            prng = np.random.default_rng([0, patient, 0])
            anatomy = build_anatomy(prng)
            redrawn = draw_tracks(anatomy, prng, timepoints=8, liver_hu=anatomy.named["liver"].hu, version=new)
            assert [t.center for t in redrawn] != [t.center for t in tracks]
        else:
            same += 1
            assert np.array_equal(a.hu, b.hu) and [les.box for les in a.lesions] == [les.box for les in b.lesions]
    assert same and differ
    with pytest.raises(ValueError, match="cohort version"):
        synthesize_study(0, 0, small=True, cohort_version=4)


def test_lymph_nodes_lie_in_fat_from_version_3():
    """Version 3 draws each lymph node around its chain (trachea, aorta, iliac artery) until it
    touches no solid but the lung and mediastinum and stays inside the mediastinum (a mediastinal
    node) or the body wall; in version 2 most abdominal and pelvic nodes touched an organ, a
    vessel or a muscle. Most nodes still find a place (a bulky one may not: it is left out, as a
    clashing lesion always was)."""
    from node.synth.anatomy import build_anatomy
    from node.synth.lesions import NODE_SURROUNDS, _reach, draw_tracks

    def in_fat(track, anatomy) -> bool:
        reach = float(_reach(track, 8).max())
        lm = anatomy.landmarks
        wall = 2.0 + lm["fat_mm"] + lm["muscle_mm"]
        if track.lesion_type is LesionType.MEDIASTINUM:
            inside = anatomy.named["mediastinum"].contains(track.center, -reach)
        else:
            inside = anatomy.body.contains(track.center, -(wall + reach))
        return inside and not any(
            s.contains(track.center, reach) for s in anatomy.solids if s.name not in NODE_SURROUNDS
        )

    nodes = {2: [], 3: []}
    for version in nodes:
        for patient in range(40):
            prng = np.random.default_rng([0, patient, 0])
            anatomy = build_anatomy(prng)
            tracks = draw_tracks(anatomy, prng, timepoints=8, liver_hu=anatomy.named["liver"].hu, version=version)
            nodes[version] += [in_fat(t, anatomy) for t in tracks if t.appearance == "lymph_node"]
    assert all(nodes[3]) and len(nodes[3]) >= 0.7 * len(nodes[2])
    assert np.mean(nodes[2]) < 0.5
