"""From probability maps to the Camelyon16 scores: detections (:mod:`.detection`), the FROC and slide AUC by the
challenge's rules (:mod:`.froc`) and a test set on disk as evaluation cases (:mod:`.testset`)."""
