"""Metastasis detection in whole-slide images (Camelyon16): ResNet18 patch classifier, tissue-restricted
whole-slide inference and the Camelyon16 FROC, rebuilt from the Clara Train 4.1
``clara_pt_pathology_metastasis_detection`` model."""
