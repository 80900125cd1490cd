"""Real English text that every Python installation carries, for the demo and the benchmarks.

Nothing is shipped in this repository and nothing is downloaded: the texts
come with CPython itself.

* The demo's document: CPython's ``LICENSE.txt`` (installed beside the
  standard library, ``<stdlib>/LICENSE.txt``): the history of Python's
  releases and the PSF, CNRI, BeOpen and CWI licence agreements, about 3,800
  tokens of English prose. Reading and quoting it is what the licence text
  is for; its terms (PSF-2.0) permit redistribution too. Installations that
  leave the file out (some distributions move it to their doc folders) get
  the fallback below.
* The held-out text of ``benchmarks.fidelity`` (and the fallback document):
  the Python Language Reference's sections as CPython ships them for
  ``help()`` in ``pydoc_data/topics.py`` (the documentation's text, PSF-2.0),
  English prose with some code examples; several sections in a fixed order
  give tens of thousands of tokens.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Reference sections: the demo's fallback, then the held-out text (fixed order).
FALLBACK_TOPICS = ("execmodel", "import")
HELD_OUT_TOPICS = ("compound", "specialnames", "types", "typesseq", "formatstrings", "assignment",
                   "comparisons", "calls", "try", "function")


@dataclass(frozen=True)
class Document:
    title: str
    source: str  # where the text was read from, and its licence
    text: str
    question: str  # a question the text answers
    other_question: str  # a second one, for a request that shares only the document


def license_path() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"


def reference_topics(names) -> str:
    """The named sections of the Language Reference as shipped in ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in names if name in topics)


def demo_document() -> Document:
    """CPython's LICENSE.txt, or two Language Reference sections where it is absent."""
    path = license_path()
    if path.is_file():
        return Document(
            title="CPython's LICENSE.txt (history of the software, PSF/CNRI/BeOpen/CWI licences)",
            source=f"{path} (PSF-2.0)",
            text=path.read_text(encoding="utf-8", errors="replace").strip(),
            question="Who created Python, and where?",
            other_question="Which organization holds the intellectual property of Python?",
        )
    return Document(
        title="The Python Language Reference: Execution model, The import system",
        source="pydoc_data/topics.py of the standard library (PSF-2.0)",
        text=reference_topics(FALLBACK_TOPICS),
        question="What exception is raised when a name is not found at all?",
        other_question="What is a code block?",
    )


def held_out_text() -> str:
    """The fidelity benchmark's text: Language Reference sections (not the demo's document)."""
    return reference_topics(HELD_OUT_TOPICS)
