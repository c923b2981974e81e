"""nbval settings for the example notebooks: model cells stay offline; volatile outputs are not compared."""

from __future__ import annotations

import os

import pytest

# what the notebooks write (models, images, logs) is not a test
collect_ignore = ["_out"]


def pytest_configure(config: pytest.Config) -> None:
    # The kernels inherit this process's environment: offline, `hub.ensure_checkpoint` makes the demo
    # checkpoint at once instead of trying a 2 GB download. HF_HUB_OFFLINE=0 in the environment tests the
    # real download.
    # (Only settings that are right for the unit tests too: this runs for the whole session.)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collectstart(collector: pytest.Collector) -> None:
    # Widget views, HTML tables and stderr (warnings, progress) differ between runs; text/plain is still
    # checked in the cells marked NBVAL_CHECK_OUTPUT.
    path = getattr(collector, "path", None)
    if path is not None and path.suffix == ".ipynb" and hasattr(collector, "skip_compare"):
        collector.skip_compare = (*collector.skip_compare, "text/html", "application/javascript", "stderr",
                                  "application/vnd.jupyter.widget-state+json")
