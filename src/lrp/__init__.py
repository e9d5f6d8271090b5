"""pytorch-lrp: fast, faithful Layer-wise Relevance Propagation for any PyTorch model."""
from . import composites, hugepages, methods, rules
from .compat import InnvestigateModel
from .composites import Composite
from .engine import LRP, explain
from .explanation import Explanation

__all__ = ["LRP", "Composite", "Explanation", "InnvestigateModel", "composites", "explain", "hugepages", "methods",
           "rules"]
__version__ = "0.1.0"
