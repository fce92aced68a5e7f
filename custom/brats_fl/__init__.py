"""Federated brain-tumour segmentation on BraTS 2018 (SegResNet, NVIDIA FLARE), rebuilt from the Clara Train 4.1
``clara_pt_fed_learning_brain_tumor_mri_segmentation`` model."""
