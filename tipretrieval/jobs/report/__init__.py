"""The visual report of a classify output: a static HTML site that opens from disk.

Modules: `stats` (whole-output counts, histogram, accuracies), `select` (the sampled rows per
class and the least-sure rows, in bounded memory), `thumbs` (Pillow thumbnails, made once),
`labelling` (the files of the rows to label next), `model` (what the pages show), `html` (the
pages) and `build` (`build_report`, tying them together).
"""

from .build import ReportOptions, ReportResult, build_report

__all__ = ["ReportOptions", "ReportResult", "build_report"]
