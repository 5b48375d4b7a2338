"""The built-in background tasks, submitted at priority ``background`` (run only while nothing else
waits and the device idles; a foreground job arriving interrupts them):

- a base-model baseline evaluation (``eval --base-only``) for each installed expert whose manifest
  names evaluation sets, shipped inside the package, that have no base-model result yet;
- re-verification of every installed expert against the keys trusted now (``list --verify``).

A task already queued or running is not submitted again.
"""

from __future__ import annotations

from pathlib import Path

from expertkit.errors import ExpertkitError
from expertkit.home import expertkit_home
from expertkit.jobs.model import Job
from expertkit.jobs.store import JobQueue
from expertkit.layout import BASE_EVALS, EVALS_DIR, MANIFEST_FILE, STORE_DIR
from expertkit.manifest.load import load_manifest

ACTIVE = ("waiting", "queued", "running")


def missing_baselines(store: Path) -> list[Path]:
    """Installed expert directories with evaluation sets that lack a base-model result."""
    found = []
    for manifest_path in sorted(store.glob(f"*/*/{MANIFEST_FILE}")):
        try:
            manifest = load_manifest(manifest_path.parent).manifest
        except ExpertkitError:
            continue  # an unreadable installed manifest is re-verification's to report
        root = manifest_path.parent.resolve()
        sets = manifest.evaluation.sets if manifest.evaluation else []
        runnable = [s for s in sets if _inside(root, s.path)]  # a package ships only the sets inside it
        results = expertkit_home() / EVALS_DIR / manifest.name / BASE_EVALS
        if any(not (results / f"{s.name}.json").is_file() for s in runnable):
            found.append(manifest_path.parent)
    return found


def _inside(root: Path, relative: str) -> bool:
    path = (root / relative).resolve()
    return path.is_file() and path.is_relative_to(root)


def submit_background_tasks(queue: JobQueue) -> list[Job]:
    """Submit the background tasks not already waiting or running; the jobs submitted."""
    active = [j for j in queue.jobs() if j.state in ACTIVE]
    store = expertkit_home() / STORE_DIR
    submitted = []
    if not any(j.kind == "verify" for j in active):
        submitted.append(queue.submit("verify", store, [], "background"))
    pending = {Path(j.manifest) for j in active if j.kind == "eval" and "--base-only" in j.options}
    for directory in missing_baselines(store):
        if directory.resolve() not in pending:
            submitted.append(queue.submit("eval", directory, ["--base-only"], "background"))
    return submitted
