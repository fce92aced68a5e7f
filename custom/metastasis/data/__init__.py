"""What training and inference read: slides (:mod:`.slide`), ASAP annotations (:mod:`.annotations`), tissue masks
(:mod:`.tissue`), stain estimation, normalisation and augmentation (:mod:`.stain`), patch transforms
(:mod:`.transforms`), patch lists (:mod:`.patch_lists`, made from slides by :mod:`.sampling`) and the patches they
point at (:mod:`.dataset`)."""
