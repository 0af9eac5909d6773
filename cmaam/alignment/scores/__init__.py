"""Weight-derived merge scores (PDA, GFS, CMBC, sensitivity) and the one streaming analysis pass."""

from cmaam.alignment.scores.cmbc import cmbc, embedding_subspace, top_left_subspace
from cmaam.alignment.scores.gfs import gfs, gradient_probes
from cmaam.alignment.scores.pda import pda
from cmaam.alignment.scores.sensitivity import relative_change, sensitivity_variance

__all__ = ["cmbc", "embedding_subspace", "gfs", "gradient_probes", "pda", "relative_change",
           "sensitivity_variance", "top_left_subspace"]
