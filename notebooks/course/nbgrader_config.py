"""nbgrader's settings for the kdlab course (run nbgrader from this folder, or use `make assignments`).

source/<assignment>/NN_exercises.ipynb  the instructor's versions: solutions, hidden tests, points
release/<assignment>/                   what learners get (`nbgrader generate_assignment`; `make
                                        assignments` generates the same in a scratch folder and writes
                                        it to notebooks/exercises/)
submitted/<student>/<assignment>/       collected submissions; autograded/ and feedback/ follow
gradebook.db, grades.csv                nbgrader's gradebook (SQLite) and `nbgrader export`'s table
"""
c = get_config()  # noqa: F821 (nbgrader provides get_config)

c.CourseDirectory.course_id = "kdlab"
c.CourseDirectory.root = "."
# Every assignment's test cells are kdlab.exercises checks: a failed one shows only its message.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# A test cell whose check takes longer than this fails (the checks take seconds on a laptop CPU).
c.ExecutePreprocessor.timeout = 300
# A kernel that has not started after this long fails the notebook. Starting one imports PyTorch and kdlab,
# seconds on an idle laptop; nbgrader's default of 60 s ran out once here (2026-12-01, two autogrades at once
# on two busy cores), and a classroom server grading many submissions is busier.
c.ExecutePreprocessor.startup_timeout = 300
