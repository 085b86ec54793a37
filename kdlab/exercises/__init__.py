"""Checks for the assignments (``notebooks/exercises/``, made by nbgrader from ``notebooks/course/source/``).

Each assignment asks for the step its tutorial writes out, under the same name. A check runs the
learner's function next to kdlab's implementation on small inputs and either prints what passed or
raises :class:`ExerciseError` with a message that says what is wrong (missing T^2, wrong direction,
overflow, ...) without showing the solution. Checks come in graded parts::

    kd.exercises.check_kl_step(my_kl_step)                         # every part, for self-study
    kd.exercises.check_kl_step(my_kl_step, "temperature")          # one part (one graded cell)
    kd.exercises.check_kl_step(my_kl_step, "temperature", hidden=True)  # graders: other inputs, and
                                                                   # calling kdlab's own KL scores 0
"""
from .core import ExerciseError, Forbidden, guarded, recording
from .kl_step import check_kl_step

__all__ = ["ExerciseError", "Forbidden", "check_kl_step", "guarded", "recording"]
