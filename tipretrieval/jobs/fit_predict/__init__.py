"""`fit-predict`: two image folders (labelled class folders, new images) -> a tuned cache,
predictions with evidence and an HTML report, every stage resumable.

Modules: `holdout` (which labelled images validate, and why) and `run` (the stages).
"""

from .holdout import RULE as HOLDOUT_RULE
from .run import FitPredictOptions, FitPredictResult, fit_predict

__all__ = ["HOLDOUT_RULE", "FitPredictOptions", "FitPredictResult", "fit_predict"]
