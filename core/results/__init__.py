"""Where the jobs' files live: a local volume, or S3-compatible object storage.

Both the API (inputs in, outputs out) and the workers (inputs down, snapshots,
checkpoints and outputs up) go through :class:`ResultsStore`; which one is
chosen by ``DIP_RESULTS_URL`` (:func:`open_results`).
"""

from core.results.base import ObjectInfo, ResultsStore, ResultsUnavailable
from core.results.factory import clear_stale_staging, open_results, results_refusal, staging_dir

__all__ = ["ObjectInfo", "ResultsStore", "ResultsUnavailable", "clear_stale_staging", "open_results",
           "results_refusal", "staging_dir"]
