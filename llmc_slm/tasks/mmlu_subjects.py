"""The 57 MMLU subjects, their category, and the per-subject description the harness prepends.

Facts reproduced from lm-evaluation-harness 0.4.13 (``lm_eval/tasks/mmlu/default`` and
``mmlu/continuation``), checked against the installed YAML files by ``tests/test_tasks.py``:

- every subject is a task ``mmlu_<subject>`` (letters) or ``mmlu_<subject>_continuation`` (cloze);
- subjects are grouped into four categories (stem, other, social sciences, humanities); the
  ``mmlu`` group holds the four category groups, and every group's ``acc`` is the mean over its
  leaf subjects weighted by the number of items evaluated in each (``weight_by_size: True``), with
  the pooled standard error;
- the description is the subject name with ``_`` read as a space, in a fixed sentence.
"""

from __future__ import annotations

# Category order as the harness's groups list them (mmlu/default/_mmlu.yaml).
CATEGORIES = ("stem", "other", "social_sciences", "humanities")

_BY_CATEGORY = {
    "stem": (
        "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
        "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
        "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
        "high_school_mathematics high_school_physics high_school_statistics machine_learning"
    ),
    "other": (
        "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
        "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology"
    ),
    "social_sciences": (
        "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
        "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
        "public_relations security_studies sociology us_foreign_policy"
    ),
    "humanities": (
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
        "prehistory professional_law world_religions"
    ),
}

# subject -> category, subjects in alphabetical order (the order of the data files and of the tasks)
SUBJECTS: dict[str, str] = dict(sorted((s, cat) for cat, names in _BY_CATEGORY.items() for s in names.split()))
assert len(SUBJECTS) == 57


def subjects_of(category: str) -> list[str]:
    return [s for s, c in SUBJECTS.items() if c == category]


def description(subject: str, cloze: bool) -> str:
    """The text the harness puts before every prompt of ``subject`` (its task's ``description``)."""
    kind = "questions" if cloze else "multiple choice questions"
    return f"The following are {kind} (with answers) about {subject.replace('_', ' ')}.\n\n"


def task_name(subject: str, cloze: bool) -> str:
    return f"mmlu_{subject}_continuation" if cloze else f"mmlu_{subject}"
