"""Which CI pipeline this process runs in, so that `call-me release ENV` frees only what this pipeline took.

`call-me request` records the identity in the lease's metadata (`pipeline`). A later job of the same pipeline
(the same GitHub Actions run, the same GitLab pipeline) finds the lease by it when the job that took it kept
its token on another runner; another run, another pipeline or a person's shell never matches.
"""

from __future__ import annotations

from collections.abc import Mapping

METADATA_KEY = "pipeline"


def identity(environ: Mapping[str, str]) -> str | None:
    """`github:OWNER/REPO/RUN_ID` or `gitlab:GROUP/PROJECT/PIPELINE_ID`; None outside a known CI pipeline."""
    if environ.get("GITHUB_ACTIONS") == "true" and environ.get("GITHUB_REPOSITORY") and environ.get("GITHUB_RUN_ID"):
        return f"github:{environ['GITHUB_REPOSITORY']}/{environ['GITHUB_RUN_ID']}"
    if environ.get("GITLAB_CI") == "true" and environ.get("CI_PROJECT_PATH") and environ.get("CI_PIPELINE_ID"):
        return f"gitlab:{environ['CI_PROJECT_PATH']}/{environ['CI_PIPELINE_ID']}"
    return None
