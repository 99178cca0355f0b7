"""Classify an MR (or other) series from its DICOM header: Intent, Measurement, Features.

This module is deliberately standalone: Python standard library only and no
``hpcgear`` imports, because the bundled dicom-header gear copies this one file
into its image. Keep it that way (a test parses its imports).

``classify(header)`` takes a plain dict keyed by DICOM keywords (the shape
hpcgear stores in file ``info``: strings, numbers, lists; multi-valued strings
may also be backslash-separated) and returns Flywheel's classification shape::

    {"Intent": [...], "Measurement": [...], "Features": [...]}

The vocabulary is Flywheel's MR classification vocabulary (Intent: Localizer,
Shim, Calibration, Fieldmap, Structural, Functional, Screenshot, Spectroscopy;
Measurement: T1, T2, PD, T2*, Diffusion, Perfusion, B0, B1, Susceptibility, ...;
Features: 2D, 3D, MPRAGE, MP2RAGE, FLAIR, SWI, EPI, Derived, Phase, Magnitude,
...). Where Flywheel has no term, the one used here is listed in ``EXTRA_TERMS``.

The order of the checks matters and is the reason for most of the code shape:
localizers first (they borrow any contrast name), then the specific kinds that
are *also* EPI (field maps, diffusion, perfusion) before functional BOLD, then
angiography / SWI / FLAIR before plain T1 / T2 (their names often contain
"T1"/"T2"), and only then timing heuristics (TR/TE/TI). Bump
``CLASSIFIER_VERSION`` whenever a result can change, so stored files can be
re-classified (``hpcgear ingest reclassify``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

CLASSIFIER_VERSION = "1.0.0"

INTENTS = (
    "Localizer",
    "Shim",
    "Calibration",
    "Fieldmap",
    "Structural",
    "Functional",
    "Screenshot",
    "Spectroscopy",
    "Non-Image",
)
MEASUREMENTS = (
    "T1",
    "T2",
    "PD",
    "T2*",
    "MT",
    "Diffusion",
    "Perfusion",
    "B0",
    "B1",
    "Susceptibility",
    "Velocity",
    "Spectroscopy",
)
#: Terms used here that Flywheel's MR vocabulary does not define.
EXTRA_TERMS = ("Angio", "ADC")

Classification = dict[str, list[str]]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return str(value)


def _as_list(value: Any) -> list[str]:
    """DICOM multi-values as upper-case strings: lists, tuples or ``A\\B`` strings."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items: Iterable[Any] = value
    else:
        items = str(value).split("\\")
    return [str(v).strip().upper() for v in items if str(v).strip()]


def _number(value: Any) -> float | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(str(value).split("\\")[0])
    except ValueError:
        return None


def _word(pattern: str) -> re.Pattern[str]:
    """A regex that matches ``pattern`` not glued to other letters/digits.

    ``\\b`` is useless here: scanner names join words with ``_`` (t1_mprage_sag).
    """
    return re.compile(rf"(?<![a-z0-9])(?:{pattern})(?![a-z0-9])")


_LOCALIZER = _word(
    r"locali[sz]er\w*|loc|scout|survey|aahead\w*|tri[-_ ]?pilot|3[-_ ]?plane|"
    r"fast[-_ ]?pilot|pilot"
)
_AASCOUT = _word(r"aahead\w*|aa[-_ ]?scout")
_SHIM = _word(r"\w*shim\w*")
_CALIB = _word(
    r"calibration|cal|asset[-_ ]?cal\w*|pure|coil[-_ ]?survey|sense[-_ ]?ref\w*|refscan|"
    r"prescan|bodycoil|head[-_ ]?coil"
)
_SPECTRO = _word(r"svs|csi|mrs|press|steam|spectro\w*|mega[-_ ]?press|slaser|semi[-_ ]?laser")
_B1 = _word(r"b1(?:[-_ ]?map)?|tfl[-_ ]?b1\w*|afi|b1plus\w*|dream|rf[-_ ]?map")
_FIELDMAP = _word(
    r"field[-_ ]?maps?|field[-_ ]?mapping|fmap|fm|b0(?:[-_ ]?map)?|phase[-_ ]?diff|"
    r"gre[-_ ]?field\w*|topup|se[-_ ]?epi|spin[-_ ]?echo[-_ ]?field\w*|sefm\w*|distortion\w*|"
    r"blip\w*|rpe|pepolar"
)
_DIFF = _word(
    r"dwi|dti|diff\w*|dsi|hardi|noddi|dki|multi[-_ ]?shell|ep_b\d+\w*|adc|trace|fa|colfa|tensor"
)
_DIFF_SEQ = re.compile(r"ep_b\d|re_b\d|ep2d_diff|epse2d|dwi")
_DERIVED_DIFF = _word(r"adc|trace|fa|colfa|tensor|exp")
_ASL = _word(r"asl|pcasl|pasl|casl|tgse|pasl\w*|pcasl\w*|perfusion|perf|pwi|dsc|cbf|rcbv|dce")
_BOLD = _word(
    r"bold|fmri|f[-_ ]?mri|rest|resting\w*|rsfmri|rs[-_ ]?fmri|task\w*|func|functional|rs|"
    r"mb\d?[-_ ]?epi|ep2d[-_ ]?bold"
)
_SBREF = _word(r"sbref|sb[-_ ]?ref")
_ANGIO = _word(r"tof|mra|angio\w*|cow|pc[-_ ]?mra|venogra\w*|mrv|flow[-_ ]?comp\w*")
_SWI = _word(r"swi|swan|susceptibility|venobold|qsm|mip[-_ ]?swi|mnip|minip")
_FLAIR = _word(r"flair|dark[-_ ]?fluid|t2[-_ ]?flair|flair[-_ ]?t2|spc[-_ ]?ir\w*|cube[-_ ]?flair")
_T2STAR = _word(r"t2\*|t2star|t2[-_ ]?star|t2s|gre|me[-_ ]?gre|megre|fl2d|hemo\w*|r2\*")
_MP2RAGE = _word(r"mp2rage\w*")
_MPRAGE = _word(
    r"mprage|mp[-_ ]?rage|tfl3d\w*|tfl|bravo|ir[-_ ]?fspgr|irfspgr|tfe3d|3d[-_ ]?tfe|spgr|mpr"
)
_T1 = _word(r"t1w?|t1[-_ ]?weighted|t1\w*|mprage|bravo|spgr|fspgr|mpr|tfl\w*")
_T2 = _word(r"t2w?|t2[-_ ]?weighted|t2\w*|tse|fse|space|spc|cube|haste|ssfse")
_T2_NAME = _word(r"t2w?|t2[-_ ]?weighted|t2\w*")
_PD = _word(r"pd|pdw|pd[-_ ]?weighted|proton[-_ ]?density")
_MT = _word(r"mt|mtr|mt[-_ ]?on|mt[-_ ]?off|magnetization[-_ ]?transfer")
_SCREEN = _word(
    r"screen[-_ ]?save|screenshot|secondary[-_ ]?capture|report|phoenix\w*|exam[-_ ]?card"
)

_SPECTRO_SOP = ("1.2.840.10008.5.1.4.1.1.4.2",)  # MR Spectroscopy Storage
_SCREENSHOT_SOP = ("1.2.840.10008.5.1.4.1.1.7",)  # Secondary Capture


def _result(
    intent: Iterable[str], measurement: Iterable[str], features: Iterable[str]
) -> Classification:
    def dedupe(items: Iterable[str]) -> list[str]:
        out: list[str] = []
        for item in items:
            if item not in out:
                out.append(item)
        return out

    return {
        "Intent": dedupe(intent),
        "Measurement": dedupe(measurement),
        "Features": dedupe(features),
    }


def _common_features(h: Mapping[str, Any], image_type: list[str], scanning: list[str]) -> list[str]:
    feats: list[str] = []
    acq = str(h.get("MRAcquisitionType") or "").upper()
    if acq in ("2D", "3D"):
        feats.append(acq)
    if "DERIVED" in image_type[:1] or "SECONDARY" in image_type[1:2]:
        feats.append("Derived")
    if "P" in image_type or "PHASE" in image_type:
        feats.append("Phase")
    if "M" in image_type[2:] or "MAGNITUDE" in image_type:
        feats.append("Magnitude")
    if "EP" in scanning:
        feats.append("EPI")
    if "FS" in _as_list(h.get("ScanOptions")):
        feats.append("Fat-Sat")
    return feats


def classify(header: Mapping[str, Any]) -> Classification:
    """Classify one series from its header fields (DICOM keywords -> values).

    Parameters
    ----------
    header
        Keys are DICOM keywords: SeriesDescription, ProtocolName, SequenceName,
        ImageType, ScanningSequence, SequenceVariant, ScanOptions,
        MRAcquisitionType, RepetitionTime, EchoTime, InversionTime, FlipAngle,
        Modality, SOPClassUID, DiffusionBValue, NumberOfTemporalPositions,
        NumberOfFrames, EchoNumbers, ... Missing keys are fine.

    Returns
    -------
    dict
        ``{"Intent": [...], "Measurement": [...], "Features": [...]}``. Intent and
        Measurement are empty when nothing is recognised; Features still carry
        the plain facts (2D/3D, Derived, EPI, ...).
    """
    h = header
    names = " | ".join(
        _text(h.get(k)).lower() for k in ("SeriesDescription", "ProtocolName", "SequenceName")
    )
    desc = " | ".join(_text(h.get(k)).lower() for k in ("SeriesDescription", "ProtocolName"))
    seq_name = _text(h.get("SequenceName")).lower()
    image_type = _as_list(h.get("ImageType"))
    scanning = _as_list(h.get("ScanningSequence"))
    variant = _as_list(h.get("SequenceVariant"))
    modality = str(h.get("Modality") or "").upper()
    sop_class = str(h.get("SOPClassUID") or "")
    tr = _number(h.get("RepetitionTime"))
    te = _number(h.get("EchoTime"))
    ti = _number(h.get("InversionTime"))
    bval = _number(h.get("DiffusionBValue"))
    temporal = _number(h.get("NumberOfTemporalPositions")) or 0
    frames = _number(h.get("NumberOfFrames")) or 0
    feats = _common_features(h, image_type, scanning)

    # 1. Localizers borrow any contrast name, so they are checked first.
    if "LOCALIZER" in image_type or _LOCALIZER.search(desc):
        extra: list[str] = ["AAscout"] if _AASCOUT.search(names) else []
        return _result(["Localizer"], [], [*extra, *feats])

    image_type_text = " ".join(image_type)
    if sop_class in _SCREENSHOT_SOP or _SCREEN.search(desc) or "SCREEN SAVE" in image_type_text:
        return _result(["Screenshot"], [], feats)

    if modality not in ("", "MR"):
        # Not MR: only the generic facts (CT/PET/... have their own vocabularies).
        return _result([], [], feats)

    # 2. Spectroscopy, shim and calibration scans.
    if sop_class in _SPECTRO_SOP or "SPECTROSCOPY" in image_type or _SPECTRO.search(desc):
        return _result(["Spectroscopy"], ["Spectroscopy"], feats)
    if _SHIM.search(desc):
        return _result(["Shim"], [], feats)
    if _CALIB.search(desc):
        return _result(["Calibration"], [], feats)

    # 3. Field maps (B1 first: "b1" names are specific), before diffusion/BOLD
    #    because spin-echo EPI field maps are EPI too.
    if _B1.search(desc) or re.search(r"tfl_?b1|b1map", seq_name):
        return _result(["Fieldmap"], ["B1"], feats)
    if _FIELDMAP.search(desc) or re.search(r"fm2d|fm3d|field_?map", seq_name):
        extra = ["SE-EPI"] if ("EP" in scanning and "SE" in scanning) else []
        return _result(["Fieldmap"], ["B0"], [*extra, *feats])

    # 4. Diffusion (DWI/DTI and their derived maps) before functional: both EPI.
    is_diff_seq = bool(_DIFF_SEQ.search(seq_name))
    if _DIFF.search(desc) or is_diff_seq or (bval is not None and bval > 0):
        extra = []
        if _word(r"dti|tensor").search(desc):
            extra.append("DTI")
        if "Derived" in feats or _DERIVED_DIFF.search(desc):
            if _word(r"adc").search(desc) or "ADC" in image_type:
                extra.append("ADC")
            if _word(r"fa|colfa").search(desc) or "FA" in image_type:
                extra.append("FA")
            if _word(r"trace").search(desc) or "TRACEW" in image_type:
                extra.append("TRACE")
        return _result(["Structural"], ["Diffusion"], [*extra, *feats])

    # 5. Perfusion (ASL, DSC) before BOLD: DSC is a dynamic EPI too.
    if _ASL.search(desc):
        extra = []
        for term, rx in (("pCASL", r"pcasl"), ("PASL", r"pasl"), ("FAIR", r"fair")):
            if re.search(rx, desc):
                extra.append(term)
        return _result(["Structural"], ["Perfusion"], [*extra, *feats])

    # 6. Functional BOLD: named so, or an EPI time series.
    if _SBREF.search(desc):
        return _result(["Functional"], ["T2*"], ["SBRef", *feats])
    epi_series = "EP" in scanning and (temporal > 10 or frames > 10)
    if _BOLD.search(desc) or re.search(r"epfid|ep2d_bold", seq_name) or epi_series:
        return _result(["Functional"], ["T2*"], feats)

    # 7. Angiography, SWI, FLAIR: their names often also say T1/T2.
    if _ANGIO.search(desc) or "ANGIO" in image_type or "MIP" in image_type_text:
        mip = "MIP" in image_type_text or "PROJECTION IMAGE" in image_type
        extra = ["MIP"] if mip else []
        return _result(["Structural"], ["T1"], ["Angio", *extra, *feats])
    if _SWI.search(desc) or "SWI" in image_type:
        extra = ["SWI"]
        if _word(r"qsm").search(desc):
            extra.append("QSM")
        return _result(["Structural"], ["Susceptibility"], [*extra, *feats])
    if _FLAIR.search(desc) or (
        "IR" in scanning and ti is not None and ti >= 1500 and (te or 0) >= 60
    ):
        measurement = "T1" if re.search(r"t1[-_ ]?flair", desc) else "T2"
        return _result(["Structural"], [measurement], ["FLAIR", *feats])

    # 8. Named contrasts.
    if _MP2RAGE.search(names):
        extra = ["MP2RAGE"]
        if _word(r"uni\w*").search(desc):
            extra.append("Uniform")
        return _result(["Structural"], ["T1"], [*extra, *feats])
    other = re.sub(r"t2\*|t2[-_ ]?star|t2s(?![a-z0-9])", "", desc)
    if _T2STAR.search(desc) and not (_T2.search(other) or _T1.search(other)):
        extra = ["Gradient-Echo"]
        if (_number(h.get("EchoNumbers")) or 0) > 1 or _word(r"me|multi[-_ ]?echo").search(desc):
            extra.append("Multi-Echo")
        return _result(["Structural"], ["T2*"], [*extra, *feats])
    if _MT.search(desc):
        return _result(["Structural"], ["MT"], feats)
    if _T1.search(desc) or _MPRAGE.search(names):
        extra = []
        if _MPRAGE.search(names) or ("GR" in scanning and "IR" in scanning and "MP" in variant):
            extra.append("MPRAGE")
        return _result(["Structural"], ["T1"], [*extra, *feats])
    if _PD.search(desc) and not _T2_NAME.search(desc):
        return _result(["Structural"], ["PD"], feats)
    if _T2.search(desc):
        both = ["PD", "T2"] if _PD.search(desc) else ["T2"]
        return _result(["Structural"], both, feats)

    # 9. Timing heuristics (ms) when names say nothing.
    if "GR" in scanning and "IR" in scanning and "MP" in variant:
        return _result(["Structural"], ["T1"], ["MPRAGE", *feats])
    if tr is not None and te is not None:
        if tr < 800 and te < 30:
            return _result(["Structural"], ["T1"], feats)
        if tr > 2000 and te > 70:
            return _result(["Structural"], ["T2"], feats)
        if tr > 2000 and te < 30 and "SE" in scanning:
            return _result(["Structural"], ["PD"], feats)
        if "GR" in scanning and te >= 15 and tr < 2000 and "EP" not in scanning:
            return _result(["Structural"], ["T2*"], ["Gradient-Echo", *feats])
    return _result([], [], feats)
