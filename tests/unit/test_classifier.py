"""The standalone DICOM header classifier, over synthetic headers for every class."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcgear.ingest import classifier
from hpcgear.ingest.classifier import CLASSIFIER_VERSION, classify

SOURCE = Path(classifier.__file__)

SIEMENS = {
    "Modality": "MR",
    "Manufacturer": "SIEMENS",
    "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
}


def h(**fields: Any) -> dict[str, Any]:
    return {**SIEMENS, **fields}


CASES: list[tuple[str, dict[str, Any], list[str], list[str], list[str]]] = [
    # id, header, Intent, Measurement, Features that must be present
    ("localizer-imagetype", h(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                              SeriesDescription="t1_whatever"), ["Localizer"], [], []),
    ("localizer-name", h(SeriesDescription="localizer_3plane"), ["Localizer"], [], []),
    ("scout-aahead", h(SeriesDescription="AAHead_Scout_32ch-head-coil"),
     ["Localizer"], [], ["AAscout"]),
    ("survey", h(ProtocolName="SURVEY", SeriesDescription="Survey_SHC"), ["Localizer"], [], []),
    ("t1-mprage", h(SeriesDescription="t1_mprage_sag_p2_iso", SequenceName="*tfl3d1_16ns",
                    MRAcquisitionType="3D", ScanningSequence=["GR", "IR"],
                    SequenceVariant=["SK", "SP", "MP"]),
     ["Structural"], ["T1"], ["MPRAGE", "3D"]),
    ("t1w-bids-name", h(SeriesDescription="T1w"), ["Structural"], ["T1"], []),
    ("t2-tse", h(SeriesDescription="t2_tse_tra", MRAcquisitionType="2D"),
     ["Structural"], ["T2"], ["2D"]),
    ("t2-space", h(SeriesDescription="T2w_SPC_800um"), ["Structural"], ["T2"], []),
    ("flair-name", h(SeriesDescription="t2_flair_tra"), ["Structural"], ["T2"], ["FLAIR"]),
    ("flair-timing", h(SeriesDescription="ax 3", ScanningSequence=["SE", "IR"],
                       InversionTime=2500, EchoTime=90, RepetitionTime=9000),
     ["Structural"], ["T2"], ["FLAIR"]),
    ("pd", h(SeriesDescription="pd_tse_cor"), ["Structural"], ["PD"], []),
    ("pd-t2", h(SeriesDescription="PD_T2_dual_echo"), ["Structural"], ["PD", "T2"], []),
    ("dwi", h(SeriesDescription="ep2d_diff_mddw_30", ScanningSequence="EP",
              SequenceName="*ep_b1000#1"), ["Structural"], ["Diffusion"], ["EPI"]),
    ("dti", h(SeriesDescription="DTI_64dir"), ["Structural"], ["Diffusion"], ["DTI"]),
    ("dwi-bvalue-only", h(SeriesDescription="ax 7", DiffusionBValue=1000),
     ["Structural"], ["Diffusion"], []),
    ("adc-derived", h(SeriesDescription="ep2d_diff_ADC",
                      ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]),
     ["Structural"], ["Diffusion"], ["ADC", "Derived"]),
    ("bold-name", h(SeriesDescription="ep2d_bold_rest", ScanningSequence="EP"),
     ["Functional"], ["T2*"], ["EPI"]),
    ("bold-task", h(SeriesDescription="task-nback_run-1"), ["Functional"], ["T2*"], []),
    ("bold-epi-timeseries", h(SeriesDescription="ax 12", ScanningSequence="EP",
                              NumberOfTemporalPositions=240), ["Functional"], ["T2*"], ["EPI"]),
    ("sbref", h(SeriesDescription="rfMRI_REST_AP_SBRef", ScanningSequence="EP"),
     ["Functional"], ["T2*"], ["SBRef"]),
    ("fieldmap-gre", h(SeriesDescription="gre_field_mapping", SequenceName="*fm2d2r"),
     ["Fieldmap"], ["B0"], ["Magnitude"]),
    ("fieldmap-phase", h(SeriesDescription="gre_field_mapping",
                         ImageType=["ORIGINAL", "PRIMARY", "P", "ND"]),
     ["Fieldmap"], ["B0"], ["Phase"]),
    ("fieldmap-se-epi", h(SeriesDescription="SpinEchoFieldMap_AP",
                          ScanningSequence=["EP", "SE"]), ["Fieldmap"], ["B0"], ["SE-EPI"]),
    ("fieldmap-topup", h(SeriesDescription="dwi_topup_PA", ScanningSequence="EP"),
     ["Fieldmap"], ["B0"], []),
    ("b1-map", h(SeriesDescription="tfl_b1map"), ["Fieldmap"], ["B1"], []),
    ("angio-tof", h(SeriesDescription="tof_fl3d_tra_p3", MRAcquisitionType="3D"),
     ["Structural"], ["T1"], ["Angio", "3D"]),
    ("angio-mip", h(SeriesDescription="ANGIO Projected from C",
                    ImageType=["DERIVED", "SECONDARY", "PROJECTION IMAGE"]),
     ["Structural"], ["T1"], ["Angio", "MIP", "Derived"]),
    ("t2star", h(SeriesDescription="gre_t2star_tra"), ["Structural"], ["T2*"],
     ["Gradient-Echo"]),
    ("t2star-multiecho", h(SeriesDescription="me_gre_t2star", EchoNumbers=4),
     ["Structural"], ["T2*"], ["Multi-Echo"]),
    ("swi", h(SeriesDescription="SWI_Images"), ["Structural"], ["Susceptibility"], ["SWI"]),
    ("swi-mnip", h(SeriesDescription="mIP_Images(SW)",
                   ImageType=["DERIVED", "PRIMARY", "MNIP", "SWI"]),
     ["Structural"], ["Susceptibility"], ["SWI", "Derived"]),
    ("perfusion-pcasl", h(SeriesDescription="pcasl_3d_tgse"),
     ["Structural"], ["Perfusion"], ["pCASL"]),
    ("perfusion-dsc", h(SeriesDescription="ep2d_perf", ScanningSequence="EP",
                        NumberOfTemporalPositions=50), ["Structural"], ["Perfusion"], ["EPI"]),
    ("spectroscopy-name", h(SeriesDescription="svs_se_30_PCC"),
     ["Spectroscopy"], ["Spectroscopy"], []),
    ("spectroscopy-sop", h(SeriesDescription="x", SOPClassUID="1.2.840.10008.5.1.4.1.1.4.2"),
     ["Spectroscopy"], ["Spectroscopy"], []),
    ("calibration", h(SeriesDescription="ASSET calibration"), ["Calibration"], [], []),
    ("shim", h(SeriesDescription="AdvShim"), ["Shim"], [], []),
    ("screenshot", h(SeriesDescription="Screen Save",
                     ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"]),
     ["Screenshot"], [], ["Derived"]),
    ("mt", h(SeriesDescription="MT_on"), ["Structural"], ["MT"], []),
    ("mp2rage", h(SeriesDescription="mp2rage_UNI_Images"),
     ["Structural"], ["T1"], ["MP2RAGE", "Uniform"]),
    ("timing-t1", h(SeriesDescription="ax 2", RepetitionTime=500, EchoTime=10),
     ["Structural"], ["T1"], []),
    ("timing-t2", h(SeriesDescription="ax 4", RepetitionTime=5000, EchoTime=100),
     ["Structural"], ["T2"], []),
    ("timing-pd", h(SeriesDescription="ax 5", RepetitionTime=3000, EchoTime=12,
                    ScanningSequence="SE"), ["Structural"], ["PD"], []),
    ("timing-mprage-sequence", h(SeriesDescription="sag 1", ScanningSequence="GR\\IR",
                                 SequenceVariant="SP\\MP"), ["Structural"], ["T1"], ["MPRAGE"]),
]


@pytest.mark.parametrize(("header", "intent", "measurement", "features"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classes(
    header: dict[str, Any], intent: list[str], measurement: list[str], features: list[str]
) -> None:
    got = classify(header)
    assert set(got) == {"Intent", "Measurement", "Features"}
    assert got["Intent"] == intent
    assert got["Measurement"] == measurement
    assert set(features) <= set(got["Features"]), got


def test_localizer_wins_over_contrast_names() -> None:
    got = classify(h(SeriesDescription="localizer T1 FLAIR bold dwi"))
    assert got["Intent"] == ["Localizer"] and got["Measurement"] == []


def test_unrecognised_and_non_mr() -> None:
    assert classify({}) == {"Intent": [], "Measurement": [], "Features": []}
    plain = classify(h(SeriesDescription="ax 9", MRAcquisitionType="2D"))
    assert plain == {"Intent": [], "Measurement": [], "Features": ["2D", "Magnitude"]}
    ct = classify({"Modality": "CT", "SeriesDescription": "Head 5mm",
                   "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]})
    assert ct["Intent"] == [] and ct["Measurement"] == []
    scout = classify({"Modality": "CT", "SeriesDescription": "Topogram",
                      "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    assert scout["Intent"] == ["Localizer"]


def test_values_in_stored_info_shapes() -> None:
    """Backslash strings, tuples and numbers-as-text all work (JSON info, raw headers)."""
    a = classify({"SeriesDescription": "sag", "ScanningSequence": "GR\\IR",
                  "SequenceVariant": ("SP", "MP"), "RepetitionTime": "2300"})
    assert a["Measurement"] == ["T1"] and "MPRAGE" in a["Features"]
    assert classify({"SeriesDescription": None, "EchoTime": [10], "RepetitionTime": 400})[
        "Measurement"] == ["T1"]


def test_no_duplicate_features_and_vocabulary() -> None:
    for _id, header, *_ in CASES:
        got = classify(header)
        for key in ("Intent", "Measurement", "Features"):
            assert len(got[key]) == len(set(got[key]))
        assert set(got["Intent"]) <= set(classifier.INTENTS)
        assert set(got["Measurement"]) <= set(classifier.MEASUREMENTS)


def test_version_is_semver() -> None:
    parts = CLASSIFIER_VERSION.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)


def test_module_is_standalone() -> None:
    """Only the standard library: the dicom-header gear vendors this one file."""
    tree = ast.parse(SOURCE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_module_runs_alone_outside_the_package(tmp_path: Path) -> None:
    copy = tmp_path / "classifier.py"
    copy.write_text(SOURCE.read_text())
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import classifier; "
        "print(classifier.classify({'SeriesDescription': 'T1w'})['Measurement'])"
    )
    res = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['T1']"
