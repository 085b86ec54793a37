"""nbgrader end to end: the released assignments are generated from the sources, and autograding
sample submissions records full, partial and zero scores in the gradebook.

The submissions, for every assignment: the tutorial's own step (full marks); a typical mistake whose
broken checks were edited to ``pass`` (partial credit: nbgrader restores the checks, and only the parts
the mistake breaks score 0). For one assignment also: one that hands the work to kdlab's reference (0 in
every part: the checks refuse it; that every assignment's checks refuse it is tested without nbgrader in
test_exercises.py), and the model solution with every check cell deleted (0)."""
from __future__ import annotations

import csv
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from assignment_sources import ASSIGNMENTS, REPO, source_notebook

sys.path.insert(0, str(REPO / "tools"))
import assignments as tool  # noqa: E402

pytestmark = pytest.mark.notebook

MISTAKES = {  # assignment -> (solution cell, text replaced, the parts that must lose their points)
    "01_teacher_pretraining": ("my_gan_step", ("F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))",
                                               "-F.binary_cross_entropy_with_logits(d_gen, torch.zeros_like(d_gen))"),
                               {"check_my_gan_step_generator"}),
    "02_output_distillation": ("my_distill_step", ("loss = loss + w * F", "loss = loss + F"), {"check_my_distill_step_joint"}),
    "03_kl_derivation": ("my_kl_step", ("(kl * T ** 2).mean()", "kl.mean()"), {"check_my_kl_step_temperature"}),
    "04_feature_distillation": ("my_feature_terms", ("F.normalize(f.pow(2).mean(1).flatten(1), dim=1)",
                                                     "f.pow(2).mean(1).flatten(1)"), {"check_my_feature_terms_attention"}),
    "05_signal_preservation": ("my_band_energies", ("(radius >= lo) & (radius < hi)", "(radius > lo) & (radius <= hi)"),
                               {"check_my_band_energies_parseval"}),
    "06_diffusion_step_distillation": ("my_two_step_target", ("col(s_2 / s_t)", "col(s_t / s_2)"),
                                       {"check_my_two_step_target_x_tilde", "check_my_progressive_step_step"}),
    "07_fused_kernels": ("online_logsumexp", ("l * torch.exp(m - m_new)", "l"),  # the hidden row needs the rescaling
                         {"check_online_logsumexp_values", "check_online_logsumexp_stable"}),
    "08_one_step_distillation": ("my_consistency_function", ("gap = k * (s / a", "gap = (s / a"),  # k missing
                                 {"check_my_consistency_function_weights"}),
}
REFERENCE = {  # ONE's solution cell -> a body that calls kdlab's own implementation (every assignment's in test_exercises)
    "my_kl_step": "def my_kl_step(student, x, teacher_logits, opt, T=1.0, direction='forward'):\n"
                  "    return kd.methods.pixelcnn.kl_step(student, x, teacher_logits, opt, T, direction)['kl'].item()",
}


KINDS = ("correct", "mistake")
ONE = "03_kl_derivation"  # nbgrader handles a refused or a deleted check the same everywhere: one assignment shows it


def _kinds(assignment: str) -> tuple[str, ...]:
    return KINDS + ("reference", "deleted") * (assignment == ONE)


def _grade(c: dict) -> dict:
    return c["metadata"].get("nbgrader", {})


def _submission(release: dict, assignment: str, kind: str) -> dict:
    """``correct``: the model solution. ``mistake``: one typical mistake in it, and the check cells of
    the parts it breaks edited to ``pass`` (nbgrader restores them). ``reference``: every solution
    calls kdlab's own implementation (the checks refuse it). ``deleted``: the model solution with
    every check cell deleted."""
    nb = tool.solved(release, json.loads(source_notebook(assignment).read_text()))
    cell_id, (old, new), lost = MISTAKES[assignment]
    kept = []
    for c in nb["cells"]:
        g = _grade(c)
        is_check = g.get("grade") and not g.get("solution")
        if kind == "mistake" and g.get("grade_id") == cell_id:
            assert old in c["source"], f"{assignment}: the sample mistake no longer applies"
            c["source"] = c["source"].replace(old, new)
        elif kind == "mistake" and g.get("grade_id") in lost:
            c["source"] = "pass  # no check here"
        elif kind == "reference" and g.get("solution") and c["cell_type"] == "code":
            c["source"] = REFERENCE[g["grade_id"]]
        elif kind == "deleted" and is_check:
            continue
        kept.append(c)
    nb["cells"] = kept
    return nb


def _autograde(assignments: list[str], work: Path) -> dict:
    """One course of these assignments: generate them, submit each one's sample notebooks, autograde
    and export (one nbgrader run each, as an instructor grades a class). Returns, per assignment, its
    released notebooks, the gradebook's scores, the graded notebooks and the exported rows."""
    from nbgrader.api import Gradebook

    course = tool.course_copy(work, only=assignments)
    released = tool.released(course)
    out = {}
    for assignment in assignments:
        (path,) = (course / "release" / assignment).glob("*.ipynb")
        release = json.loads(path.read_text())
        for kind in _kinds(assignment):
            submitted = course / "submitted" / kind / assignment / path.name
            submitted.parent.mkdir(parents=True)
            submitted.write_text(json.dumps(_submission(release, assignment, kind)))
        out[assignment] = {"released": {path.name: released[path.name]}, "name": path.name}
    tool.nbgrader("autograde", "*", cwd=course)
    tool.nbgrader("export", cwd=course)  # the gradebook as CSV, as an instructor exports it
    with open(course / "grades.csv", newline="") as f:
        exported = {(row["assignment"], row["student_id"]): row for row in csv.DictReader(f)}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for assignment, r in out.items():
            r["scores"] = {}
            for kind in _kinds(assignment):
                nb = gb.find_submission(assignment, kind).notebooks[0]
                r["scores"][kind] = {g.name: (g.auto_score, g.max_score) for g in nb.grades if g.cell.cell_type == "code"}
            r["graded"] = {kind: json.loads((course / "autograded" / kind / assignment / r["name"]).read_text())
                           for kind in r["scores"]}
            r["exported"] = {kind: exported[assignment, kind] for kind in r["scores"]}
    return out


@pytest.fixture(scope="module")
def autograded(tmp_path_factory):
    """All assignments, in two courses graded side by side (autograding is mostly kernel start-up and
    imports, about a core each). ONE grades four submissions, the others two: the halves are split so
    that they take about as long (notebooks/README.md has each assignment's autograde time)."""
    root = tmp_path_factory.mktemp("course")
    halves = [[a for a in ASSIGNMENTS if a[:2] in ("03", "04", "07", "08")],
              [a for a in ASSIGNMENTS if a[:2] not in ("03", "04", "07", "08")]]
    with ThreadPoolExecutor(2) as pool:
        graded = pool.map(lambda i: _autograde(halves[i], root / f"course{i}"), range(2))
        return {a: r for half in graded for a, r in half.items()}


def test_exercise_notebooks_are_in_sync_with_the_sources(autograded):
    generated = {name: text for r in autograded.values() for name, text in r["released"].items()}
    assert tool.stale(generated) == []
    for text in generated.values():  # nbgrader removed the solutions, the hidden tests and the model answers
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text and "hidden=True" not in text
        assert "raise NotImplementedError()" in text and "YOUR ANSWER HERE" in text


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_autograde_scores_full_partial_and_zero(autograded, assignment):
    scores = autograded[assignment]["scores"]
    full = {cell: m for cell, (_, m) in scores["correct"].items()}
    assert sum(full.values()) >= 3 and all(m > 0 for m in full.values())
    assert {cell: s for cell, (s, _) in scores["correct"].items()} == full
    lost = MISTAKES[assignment][2]
    assert {cell: s for cell, (s, _) in scores["mistake"].items()} == {c: 0.0 if c in lost else m for c, m in full.items()}
    if assignment == ONE:
        assert {cell: s for cell, (s, _) in scores["reference"].items()} == {c: 0.0 for c in full}  # refused, part by part
        assert sum(s or 0 for s, _ in scores["deleted"].values()) == 0
    exported = autograded[assignment]["exported"]  # nbgrader export: the same totals, hand-graded answers still at 0
    totals = {kind: sum(s or 0 for s, _ in cells.values()) for kind, cells in scores.items()}
    assert {kind: float(exported[kind]["raw_score"]) for kind in scores} == totals


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_graded_feedback_shows_the_checks_message_not_a_traceback(autograded, assignment):
    nb = autograded[assignment]["graded"]["mistake"]
    errors = [o for c in nb["cells"] if _grade(c).get("grade") for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors, "the typical mistake must fail a check"
    for e in errors:
        text = "\n".join(e["traceback"])
        assert e["ename"] == "ExerciseError" and len(e["traceback"]) == 1 and "kdlab/exercises" not in text
    if assignment == ONE:
        reference = autograded[assignment]["graded"]["reference"]
        messages = [o.get("evalue", "") for c in reference["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert any("score 0" in m for m in messages), "the hidden checks say why a solution that calls the reference scores 0"
