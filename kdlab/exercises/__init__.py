"""Checks for the assignments (``notebooks/exercises/``, made by nbgrader from ``notebooks/course/source/``).

Each assignment asks for the step its tutorial writes out, under the same name. A check runs the
learner's function next to kdlab's implementation, or a closed form, on small inputs and either
prints what passed or raises :class:`ExerciseError` with a message that says what is wrong (missing
T^2, wrong direction, overflow, ...) without showing the solution. Checks come in graded parts::

    kd.exercises.check_kl_step(my_kl_step)                              # every part, for self-study
    kd.exercises.check_kl_step(my_kl_step, "temperature")               # one part (one graded cell)
    kd.exercises.check_kl_step(my_kl_step, "temperature", hidden=True)  # graders: other inputs, and
                                                                        # calling kdlab's own KL scores 0
"""
from .band_energy import check_band_energies
from .core import ExerciseError, Forbidden, guarded, recording
from .feature_terms import check_feature_terms
from .kl_step import check_kl_step
from .logsumexp import check_kernel_logsumexp, check_online_logsumexp
from .one_step import check_consistency_function, check_matching_gradient
from .output_step import check_distill_step
from .progressive import check_progressive_step, check_two_step_target
from .teacher_steps import check_gan_step, check_mle_step

__all__ = ["ExerciseError", "Forbidden", "check_band_energies", "check_consistency_function", "check_distill_step",
           "check_feature_terms", "check_gan_step", "check_kernel_logsumexp", "check_kl_step", "check_matching_gradient",
           "check_mle_step", "check_online_logsumexp", "check_progressive_step", "check_two_step_target", "guarded",
           "recording"]
