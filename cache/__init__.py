"""Datasets in the CoOp layout, CoOp's few-shot sampling, open_clip encoding and the HDF5 feature cache."""
