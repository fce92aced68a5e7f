"""From probability maps to scores: detections (:mod:`.detection`), the FROC and slide AUC by Camelyon16's rules
(:mod:`.froc`), a test set on disk as evaluation cases (:mod:`.testset`), lesions with their sizes and clinical
categories (:mod:`.lesions`) as QuPath and ASAP files (:mod:`.overlays`), and CAMELYON17's slide labels, pN stages
and kappa (:mod:`.staging`)."""
