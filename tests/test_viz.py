"""Static figures (kdlab.viz) that the notebooks draw after each explorer."""
import matplotlib.pyplot as plt

import kdlab as kd


def test_teacher_student_figure_shows_both_image_sets_and_their_spectra():
    teacher, student = kd.models.Generator(width=2).eval(), kd.models.Generator(width=1).eval()
    fig = kd.viz.teacher_student_figure(teacher, student, seed=0, n=4, bands=dict(kd.textures.BANDS))
    assert len(fig.axes) == 3 and len(fig.axes[2].lines) == 2 and fig.axes[2].get_yscale() == "log"
    assert [ax.get_title() for ax in fig.axes[:2]] == ["teacher (noise seed 0)", "student (noise seed 0)"]
    plt.close(fig)
