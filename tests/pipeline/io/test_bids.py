"""BIDS names are built from entities in the standard order."""
import pytest

from cmbdetect.pipeline.io.bids import bids_name, bids_path, parse_entities


def test_entity_order_and_omission():
    name = bids_name(part="phase", echo=2, sub="01", suffix="T2starw", extension=".nii.gz")
    assert name == "sub-01_echo-2_part-phase_T2starw.nii.gz"
    assert bids_name(sub="01", echo=None, part="mag", suffix="T2starw", extension="json") == "sub-01_part-mag_T2starw.json"


def test_path_with_session_and_parse_round_trip(tmp_path):
    p = bids_path(tmp_path, sub="02", ses="a", echo=1, part="mag", suffix="MEGRE", extension=".nii.gz")
    assert p.parent == tmp_path / "sub-02" / "ses-a" / "anat"
    ent = parse_entities(p)
    assert ent == {"sub": "02", "ses": "a", "echo": "1", "part": "mag", "suffix": "MEGRE", "extension": ".nii.gz"}


@pytest.mark.parametrize("bad", [{"sub": "0_1"}, {"sub": "01", "foo": "x"}, {"sub": "a-b"}])
def test_invalid_entities_rejected(bad):
    with pytest.raises(ValueError):
        bids_name(suffix="T2starw", extension=".nii.gz", **bad)


def test_label_before_desc_as_in_the_specification():
    assert bids_name(sub="01", desc="brain", label="WM", res="2", space="MNI152NLin2009cAsym", suffix="mask",
                     extension=".nii.gz") == "sub-01_space-MNI152NLin2009cAsym_res-2_label-WM_desc-brain_mask.nii.gz"
