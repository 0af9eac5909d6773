"""Checkpoint I/O: lazy tensor-by-tensor reading of HF model folders and atomic sharded writing."""

from cmaam.io.reader import CheckpointReader, load_config
from cmaam.io.writer import CheckpointWriter, TensorSpec, parse_dtype, parse_size, reference_files, write_state_dict

__all__ = ["CheckpointReader", "CheckpointWriter", "TensorSpec", "load_config", "parse_dtype", "parse_size",
           "reference_files", "write_state_dict"]
