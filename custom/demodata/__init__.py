"""Generated data in the real formats, for the demos, tests and benchmarks (no patient data can be downloaded
here): BraTS 2018 cases as NIfTI in the release's folder layout (:mod:`.brats`) and Camelyon16 slides as
OpenSlide-readable pyramidal TIFF with ASAP XML annotations (:mod:`.camelyon`, with the centres' looks in
:mod:`.centres`), both drawn from smooth random fields (:mod:`.random_fields`).

Not part of the runtime packages: the FLARE jobs do not ship it, and the task packages import it only for their
``make-data`` commands. The loaders of :mod:`brats_fl` and :mod:`metastasis` read the real data sets unchanged.
"""
