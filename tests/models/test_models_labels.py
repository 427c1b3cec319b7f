"""The reader label policy: thresholds on the calibrated microbleed probability, not the arg-max of four classes."""
import pytest

from cmbdetect.models.detection import READER_LABELS, LabelPolicy, merge_duplicates, Detection, reader_thresholds, \
    stage2_class


def probs(mb, calc=0.0, vein=0.0):
    return {"microbleed": mb, "calcification": calc, "vein": vein, "other": max(0.0, 1.0 - mb - calc - vein)}


def test_call_and_borderline_follow_the_thresholds_not_the_argmax():
    policy = LabelPolicy(call=0.5, borderline=0.2)
    assert policy.label(probs(0.50)) == "microbleed"
    assert policy.label(probs(0.495, vein=0.0)) == "possible_microbleed"   # arg-max microbleed, below the call
    assert policy.label(probs(0.2, vein=0.7)) == "possible_microbleed"     # arg-max vein, borderline microbleed
    assert policy.label(probs(0.19, vein=0.7)) == "vein"
    assert policy.label(probs(0.1, calc=0.6)) == "calcification"
    assert policy.label(probs(0.05)) == "other"


def test_withheld_calls_never_label_a_microbleed():
    policy = LabelPolicy(call=0.5, borderline=0.2, calls_withheld="voxels coarser than validated")
    assert policy.label(probs(0.99)) == "other"
    assert policy.label(probs(0.6, vein=0.3)) == "vein"


def test_policy_from_metadata_and_bad_thresholds():
    meta = {"thresholds": {"heatmap": 0.1, **reader_thresholds(call=0.7, borderline=0.3)}}
    policy = LabelPolicy.from_metadata(meta)
    assert (policy.call, policy.borderline, policy.calls_withheld) == (0.7, 0.3, None)
    assert policy.label(probs(0.65)) == "possible_microbleed"
    assert LabelPolicy.from_metadata({}).call == 0.5
    with pytest.raises(ValueError):
        LabelPolicy(call=0.2, borderline=0.5)
    with pytest.raises(ValueError):
        reader_thresholds(call=1.0)


def test_stage2_class_and_vocabulary():
    assert stage2_class("possible_microbleed") == "microbleed"
    assert [stage2_class(x) for x in READER_LABELS] == ["microbleed", "microbleed", "calcification", "vein", "other"]
    with pytest.raises(ValueError):
        stage2_class("bleed")


def test_merge_claims_by_stage2_class_whatever_the_label():
    """A withheld call (label other) still claims its lesion, so a second peak of it is not listed twice."""
    big = Detection(centre_vox=(10.0, 10.0, 10.0), score=0.9, probabilities=probs(0.9), label="other",
                    diameter_mm=8.0)
    second = Detection(centre_vox=(11.0, 10.0, 10.0), score=0.5, probabilities=probs(0.4), label="other",
                       diameter_mm=3.0)
    assert merge_duplicates([big, second], (1.0, 1.0, 1.0)) == [big]
