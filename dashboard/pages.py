"""The dashboard's pages, in menu order: the app, its tests and the page benchmark all read this list.

Adding a page: write its script in views/ and add one line here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Page:
    script: str  # relative to dashboard/app.py, the form st.Page and AppTest.switch_page take
    title: str
    icon: str
    section: str

    @property
    def name(self) -> str:
        """The short name the tests and the bench use: the script's stem, e.g. "lr_finder"."""
        return PurePosixPath(self.script).stem


# Page scripts live in views/, not pages/: Streamlit would serve a pages/ folder as pages of its
# own (bypassing app.py) when a browser opens a page's URL directly. The first page is the default.
PAGES: tuple[Page, ...] = (
    Page("views/overview.py", "Overview", ":material/leaderboard:", "Models"),
    Page("views/compare.py", "Compare experiments", ":material/compare_arrows:", "Models"),
    Page("views/per_class.py", "Per-class accuracy", ":material/bar_chart:", "Models"),
    Page("views/confusion.py", "Confusion matrix", ":material/grid_on:", "Models"),
    Page("views/lr_finder.py", "Learning-rate finder", ":material/show_chart:", "Models"),
    Page("views/misclassified.py", "Misclassified photos", ":material/image_search:", "Models"),
    Page("views/suspect_labels.py", "Suspect labels", ":material/rule:", "Models"),
    Page("views/more_photos.py", "What more photos buy", ":material/trending_up:", "Models"),
    Page("views/upload.py", "Upload and count", ":material/photo_camera:", "Counting"),
    Page("views/reconcile.py", "Reconcile a batch", ":material/fact_check:", "Counting"),
    Page("views/batches.py", "Reconciliation batches", ":material/inventory:", "Recounts"),
    Page("views/queue.py", "Discrepancy queue", ":material/checklist:", "Recounts"),
    Page("views/recount_results.py", "What the recounts say", ":material/insights:", "Recounts"),
)


def find_page(name: str) -> Page:
    """The page called `name` (a script stem, e.g. "upload"); ValueError naming the known ones."""
    for page in PAGES:
        if page.name == name:
            return page
    raise ValueError(f"no dashboard page {name!r}; pages: {[page.name for page in PAGES]}")
