"""Metastasis detection in whole-slide images (Camelyon16): ResNet18 patch classifier, tissue-restricted
whole-slide inference and the Camelyon16 FROC, rebuilt from the Clara Train 4.1
``clara_pt_pathology_metastasis_detection`` model.

The package follows the pipeline, data flowing one way (each layer imports only those above it):

* :mod:`metastasis.data`: slides, annotations, tissue masks, stains, patch lists and the patch dataset;
* :mod:`metastasis.config` (the training recipe), :mod:`metastasis.model` (the network and its checkpoints),
  :mod:`metastasis.metrics` (patch and slide scores) and :mod:`metastasis.engine` (training and validation);
* :mod:`metastasis.inference`: probability maps of whole slides (geometry and tiling, running, map files);
* :mod:`metastasis.evaluation`: detections, the Camelyon16 FROC and test sets on disk;
* the FLARE layer: :mod:`metastasis.task`, :mod:`metastasis.learner`, :mod:`metastasis.job`,
  :mod:`metastasis.report`; and the command line, :mod:`metastasis.cli`.

The synthetic slides of the demo and tests are not part of it: :mod:`demodata`.
"""
