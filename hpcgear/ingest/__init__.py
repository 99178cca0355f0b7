"""Ingest: DICOM and NIfTI folders into the hierarchy.

Public API (service layer, :mod:`hpcgear.ingest.service`): ``ingest_dicom``,
``ingest_nifti``, ``reclassify`` and ``plan_dicom`` (the DICOM ingest itself is
:mod:`hpcgear.ingest.dicom_ingest`, on SQLAlchemy Core). Pieces: ``classifier``
(standalone, stdlib only; vendored by the dicom-header gear), ``deid``
(Flywheel-shaped de-identification profiles), ``routing`` (labels from header
values), ``dicom`` / ``nifti`` (reading files, no database) and ``report``.
"""
