"""Small shared helpers (kdlab.utils): check_parameters, the validators it builds on, jsonable and
the atomic metrics file."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import kdlab as kd
from kdlab import utils
from kdlab.utils import check_parameters


def test_check_parameters_integers_with_a_minimum():
    check_parameters(steps=(0, 0), width=(8, 1), seed=(np.int64(3), 0))  # NumPy integers count
    for value, message in ((0, r"width=0 is not valid; expected an integer >= 1"),
                           (2.0, r"width=2\.0 is not valid"), (True, r"width=True is not valid"),
                           ("8", r"width='8' is not valid")):
        with pytest.raises(ValueError, match=message):
            check_parameters(steps=(10, 0), width=(value, 1))


def test_check_parameters_checks_lists_item_by_item():
    check_parameters(widths=([16, 8, 1], 1), losses=(["mse", "l1"], ["mse", "l1", "joint"]))
    check_parameters(widths=([], 1))  # an empty list has nothing to check
    with pytest.raises(ValueError, match=r"widths\[1\]=0 is not valid; expected an integer >= 1"):
        check_parameters(widths=([16, 0, 4], 1))
    with pytest.raises(ValueError, match=r"losses\[2\]='kl' is not valid; allowed values: 'mse', 'l1'"):
        check_parameters(losses=(["mse", "l1", "kl"], ["mse", "l1"]))
    with pytest.raises(ValueError, match=r"scales\[0\]='x' is not valid; expected float"):
        check_parameters(scales=(["x", 1.0], float))


def test_check_parameters_choices_types_and_none():
    check_parameters(loss=("l1", ["mse", "l1"]), kind=("gram", ("hint", "gram")), lr=(0.1, float),
                     weight=(2, (int, float)), anything=(object(), None), path=(None, None))
    with pytest.raises(ValueError, match=r"loss='kl' is not valid; allowed values: 'mse', 'l1'"):
        check_parameters(loss=("kl", ["mse", "l1"]))
    with pytest.raises(ValueError, match=r"kind='style' is not valid; allowed values: 'hint', 'gram'"):
        check_parameters(kind=("style", ("hint", "gram")))
    with pytest.raises(ValueError, match=r"lr='0\.1' is not valid; expected float"):
        check_parameters(lr=("0.1", float))
    with pytest.raises(ValueError, match=r"weight=None is not valid; expected \(<class 'int'>, <class 'float'>\)"):
        check_parameters(weight=(None, (int, float)))


@pytest.mark.parametrize("rule", [True, 1.5, "mse", {"a": 1}])
def test_check_parameters_refuses_a_bad_rule(rule):
    with pytest.raises(TypeError, match="check_parameters: rule for 'x' must be"):
        check_parameters(x=(1, rule))


def test_check_int_and_check_choice():
    assert utils.check_int("n", np.int32(4)) == 4 and type(utils.check_int("n", np.int32(4))) is int
    assert utils.check_int("n", -2, minimum=-5) == -2
    with pytest.raises(ValueError, match=r"n=-6 is not valid; expected an integer >= -5"):
        utils.check_int("n", -6, minimum=-5)
    assert utils.check_choice("mode", "a", iter(["a", "b"])) == "a"
    with pytest.raises(ValueError, match=r"mode='c' is not valid; allowed values: 'a', 'b'"):
        utils.check_choice("mode", "c", ["a", "b"])


def test_jsonable_and_write_metrics(tmp_path):
    value = {1: torch.tensor([1.5, 2.0]), "n": np.float32(0.5), "p": Path("a/b"), "t": (np.int64(3), [torch.tensor(2)]),
             "inf": math.inf}
    assert utils.jsonable(value) == {"1": [1.5, 2.0], "n": 0.5, "p": "a/b", "t": [3, [2]], "inf": math.inf}
    path = utils.write_metrics(tmp_path / "run", value)
    assert path == tmp_path / "run" / "metrics.json"
    assert json.loads(path.read_text()) == {"1": [1.5, 2.0], "inf": math.inf, "n": 0.5, "p": "a/b", "t": [3, [2]]}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_get_device_conventions():
    assert utils.get_device("cpu") == torch.device("cpu")
    dev = torch.device("cpu")
    assert utils.get_device(dev) is dev
    auto = utils.get_device("auto").type
    assert auto == "cuda" if torch.cuda.is_available() else auto in ("mps", "cpu")
    with pytest.raises(ValueError, match="device='gpu0' is not a device"):
        utils.get_device("gpu0")


def test_max_difference_of_tensors_modules_and_containers():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert kd.utils.max_difference(a, a.clone()) == 0.0
    assert kd.utils.max_difference(a, a + torch.tensor([0.0, 0.5, -0.25])) == 0.5
    assert kd.utils.max_difference([1.0, {"x": 2.0}], [1.5, {"x": 1.0}]) == 1.0  # numbers and nested containers
    m1, m2 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        m1.bias.fill_(0.5)  # 0.5 + 0.125 is exact in float32, whatever the random initialisation
    m2.load_state_dict(m1.state_dict())
    assert kd.utils.max_difference(m1, m2) == 0.0
    with torch.no_grad():
        m2.bias[1] += 0.125
    assert kd.utils.max_difference(m1, m2) == 0.125  # the largest change of any weight, exactly
    assert kd.utils.max_difference(torch.tensor([3, 7]), torch.tensor([3, 4])) == 3.0  # integers
    for a_, b_, match in ((a, a[:2], "shapes"), ({"x": a}, {"y": a}, "names"), ([a], [a, a], "lengths"),
                          (a, a.double(), "dtypes")):
        with pytest.raises(ValueError, match=match):
            kd.utils.max_difference(a_, b_)


def test_timed_returns_the_result_and_the_wall_time():
    import time

    result, seconds = kd.utils.timed(lambda x, y=0: (time.sleep(0.05), x + y)[1], 2, y=3)
    assert result == 5 and 0.05 <= seconds < 1.0


def test_positive_and_non_negative_rules():
    assert kd.utils.positive(1) and kd.utils.positive(0.5) and not kd.utils.positive(0)
    assert not kd.utils.positive(float("inf")) and not kd.utils.positive(float("nan")) and not kd.utils.positive(True)
    assert kd.utils.non_negative(0) and not kd.utils.non_negative(-1e-9) and not kd.utils.non_negative("1")
    with pytest.raises(ValueError, match=r"lr=-0.1 is not valid; expected a finite number > 0"):
        kd.check_parameters(lr=(-0.1, kd.utils.positive))
