"""Property-based tests (hypothesis) of the four operators: BlockCS, CASSI, BlurDownsample, Denoising.

Every drawn example ends in one of two ways, and any other ending fails the test:

* a ``ValueError`` or ``TypeError`` with a message (any other exception type, e.g. a raw ``RuntimeError``
  from a convolution or an FFT, is a failure, and so is an empty message), of the type the input calls
  for: ``TypeError`` for what is not a real floating-point tensor, ``ValueError`` for a bad shape or value;
* finite outputs of the shape that ``measurement_shape`` / ``image_shape`` promise, with the adjoint
  identity ``<A x, y> = <x, A^T y>`` (float64: 1e-10, float32: 1e-4, relative to ``|A x| |y| + |x| |A^T y|``)
  and, for the HQS step, its optimality condition ``A^T (A x - y) + mu (x - z) = 0``.

What the operators check and what they do not (the library's design, see ``check_step_size`` in
physics/base.py): Python/NumPy parameters (ratio, scale, step, noise_sigma, rho, mu) and the tensors given
to constructors (matrix, mask, kernel) are checked for their values; tensors passed to ``A``,
``A_adjoint``, ``init`` and the data steps (images, measurements, learned step sizes) for type, dtype and
shape only, not for NaN/Inf: that would synchronise the device at every stage, and
``UnfoldingModel.restore`` checks the user's measurement for finiteness once. A NaN in such a tensor may
therefore come out as NaN: there the suite requires the right shape and no raw exception, and it requires
finite outputs whenever every input is finite. Finite values far outside a dtype's range (a step of 1e300
on float32 tensors) overflow as any float arithmetic does and are not drawn: steps lie in [1e-4, 1e4],
entries of images, matrices, masks and kernels are O(1).

Runs single-threaded, derandomized (the same examples on every run, so a failure reproduces: Hypothesis
prints the falsifying example) and without an example database, under settings local to each test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lorun_peft.physics import CASSI, BlockCS, BlurDownsample, Denoising, LinearOperator, gaussian_kernel


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(count: int) -> settings:
    """This test's own settings: ``count`` derandomized examples, no deadline, no database file."""
    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


CLEAR_ERRORS = (ValueError, TypeError)


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or the ValueError/TypeError it raised; any other exception propagates."""
    try:
        return fn(*args, **kwargs)
    except CLEAR_ERRORS as exc:
        assert str(exc).strip(), f"{type(exc).__name__} raised with an empty message"
        return exc


def expect_error(result: Any, error: type[Exception] | tuple[type[Exception], ...], why: str) -> None:
    names = "/".join(e.__name__ for e in (error if isinstance(error, tuple) else (error,)))
    assert isinstance(result, error), f"expected {names} ({why}), got {result!r:.200}"


def expect_tensor(result: Any, shape: tuple[int, ...], finite: bool = True) -> torch.Tensor:
    assert isinstance(result, torch.Tensor), f"expected a tensor of shape {shape}, got {result!r:.300}"
    assert tuple(result.shape) == tuple(shape), (tuple(result.shape), tuple(shape))
    if finite:
        assert bool(torch.isfinite(result).all()), f"non-finite output from finite inputs: {result}"
    return result


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def norm(t: torch.Tensor) -> float:
    return float(t.detach().double().norm())


# ----------------------------------------------------------------------------------------- valid cases
@dataclass
class Case:
    """A valid operator and the shape of an image it accepts."""

    op: LinearOperator
    image: tuple[int, ...]
    label: str  # how the operator was built (printed with a falsifying example)


seeds = st.integers(0, 2**16)


@st.composite
def block_cs_cases(draw: st.DrawFn) -> Case:
    b = draw(st.integers(1, 6))
    area = b * b
    channels = draw(st.integers(1, 3))
    seed = draw(seeds)
    source = draw(st.sampled_from(["random", "num_rows", "matrix"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if source == "matrix":
            rows = draw(st.integers(1, area))
            kind = draw(st.sampled_from(["gaussian", "zeros", "ones", "zero_row", "integer", "bool", "list"]))
            gen = generator(seed)
            matrix: Any = torch.randn(rows, area, generator=gen, dtype=torch.float64)
            if kind == "zeros":
                matrix = torch.zeros(rows, area)
            elif kind == "ones":  # rank 1
                matrix = torch.ones(rows, area)
            elif kind == "zero_row":
                matrix[draw(st.integers(0, rows - 1))] = 0.0
            elif kind == "integer":
                matrix = torch.randint(-3, 4, (rows, area), generator=gen)
            elif kind == "bool":
                matrix = torch.rand(rows, area, generator=gen) > 0.5
            elif kind == "list":
                matrix = matrix.tolist()
            ratio = min(1.0, rows / area + draw(st.floats(-0.49, 0.49)) / area)
            ratio = ratio if ratio > 0 else rows / area
            learnable = draw(st.booleans())
            op = BlockCS(ratio, b, channels, matrix=matrix, learnable=learnable)
            label = f"BlockCS(b={b}, C={channels}, {kind} matrix {rows}x{area}, learnable={learnable})"
        else:
            ratio = draw(st.floats(1e-3, 1.0))
            rows = draw(st.integers(1, area)) if source == "num_rows" else None
            op = BlockCS(ratio, b, channels, num_rows=rows)
            label = f"BlockCS(ratio={ratio!r}, b={b}, C={channels}, num_rows={rows})"
    height, width = draw(st.integers(1, 2 * b + 1)), draw(st.integers(1, 2 * b + 1))
    return Case(op, (draw(st.integers(1, 3)), channels, height, width), label)


@st.composite
def cassi_cases(draw: st.DrawFn) -> Case:
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    step, bands = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    gen = generator(draw(seeds))
    kind = draw(st.sampled_from(["uniform", "binary", "bool", "zeros", "signed", "integer", "float64"]))
    mask = {
        "uniform": lambda: torch.rand(height, width, generator=gen),
        "binary": lambda: (torch.rand(height, width, generator=gen) > 0.5).float(),
        "bool": lambda: torch.rand(height, width, generator=gen) > 0.5,
        "zeros": lambda: torch.zeros(height, width),
        "signed": lambda: torch.randn(height, width, generator=gen),
        "integer": lambda: torch.randint(0, 3, (height, width), generator=gen, dtype=torch.uint8),
        "float64": lambda: torch.rand(height, width, generator=gen, dtype=torch.float64),
    }[kind]()
    op = CASSI(mask, step)
    label = f"CASSI({kind} mask {height}x{width}, step={step})"
    return Case(op, (draw(st.integers(1, 3)), bands, height, width), label)


@st.composite
def kernels(draw: st.DrawFn, kh: int, kw: int) -> tuple[torch.Tensor, str]:
    """A 2-D kernel summing to 1 (odd or even sides): Gaussian, positive, signed, delta or box."""
    gen = generator(draw(seeds))
    kind = draw(st.sampled_from(["gaussian", "positive", "signed", "delta", "box"]))
    if kind == "gaussian" and kh == kw:
        kernel = gaussian_kernel(kh, draw(st.floats(0.3, 3.0))).double()
    elif kind == "delta":
        kernel = torch.zeros(kh, kw, dtype=torch.float64)
        kernel[draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))] = 1.0
    elif kind == "signed":  # bicubic-like: negative entries, exact sum 1
        kernel = 0.3 * torch.randn(kh, kw, generator=gen, dtype=torch.float64) / (kh * kw)
        kernel[kh // 2, kw // 2] += 1.0 - kernel.sum()
    elif kind == "box":
        kernel = torch.full((kh, kw), 1.0 / (kh * kw), dtype=torch.float64)
    else:
        kernel = torch.rand(kh, kw, generator=gen, dtype=torch.float64) + 0.01
        kernel /= kernel.sum()
    return kernel, kind


@st.composite
def sr_cases(draw: st.DrawFn) -> Case:
    scale = draw(st.sampled_from([1, 2, 3, 4, 2.0]))
    s = int(scale)
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kernel, kind = draw(kernels(kh, kw))
    if draw(st.booleans()):
        kernel = kernel.float()
    op = BlurDownsample(kernel, scale)
    height = s * draw(st.integers(-(-kh // s), -(-kh // s) + 2))
    width = s * draw(st.integers(-(-kw // s), -(-kw // s) + 2))
    label = f"BlurDownsample({kind} kernel {kh}x{kw} {kernel.dtype}, scale={scale!r})"
    return Case(op, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), height, width), label)


@st.composite
def denoising_cases(draw: st.DrawFn) -> Case:
    shape = tuple(draw(st.integers(1, n)) for n in (3, 3, 7, 7))
    return Case(Denoising(), shape, "Denoising()")


CASES = {
    "block_cs": block_cs_cases(),
    "cassi": cassi_cases(),
    "sr": sr_cases(),
    "denoising": denoising_cases(),
}
any_case = st.one_of(*CASES.values())


def positive_steps(batch: int) -> st.SearchStrategy[Any]:
    """Valid step sizes in a moderate range: Python/NumPy numbers, 0-d, (1,) and (B,) tensors."""
    value = st.floats(1e-4, 1e4)
    return st.one_of(
        value,
        st.integers(1, 100),
        value.map(np.float32),
        value.map(np.float64),
        value.map(lambda v: np.array(v)),
        value.map(torch.tensor),
        value.map(lambda v: torch.tensor([v], dtype=torch.float64)),
        st.lists(value, min_size=batch, max_size=batch).map(torch.tensor),
    )


def batch_values(step: Any, batch: int) -> torch.Tensor:
    """A step size (number, 0-d, (1,) or (B,) tensor) as a (B,) float64 tensor, for the optimality check."""
    return torch.as_tensor(np.asarray(step, dtype=np.float64)).reshape(-1).expand(batch).clone()


def adjoint_gap(op: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(|<A x, y> - <x, A^T y>|, |A x| |y| + |x| |A^T y|)``; ``A^T y`` may be on a larger (padded) grid."""
    ax, aty = op.A(x).detach(), op.A_adjoint(y).detach()
    lhs = (ax.double() * y.double()).sum()
    rhs = (x.double() * aty[..., : x.shape[-2], : x.shape[-1]].double()).sum()
    return float((lhs - rhs).abs()), norm(ax) * norm(y) + norm(x) * norm(aty)


@pytest.mark.parametrize("name", sorted(CASES))
@examples(150)
@given(dtype=st.sampled_from([torch.float64, torch.float32]), seed=seeds, data=st.data())
def test_valid_inputs_give_finite_outputs_and_exact_adjoints(name, dtype, seed, data) -> None:
    case = data.draw(CASES[name], label="case")
    op, gen = case.op.to(dtype), generator(seed)
    x = torch.randn(case.image, generator=gen, dtype=dtype)
    y_shape = op.measurement_shape(case.image)
    ax = expect_tensor(op.A(x), y_shape)
    assert ax.dtype == dtype
    y = torch.randn(y_shape, generator=gen, dtype=dtype)
    grid = op.image_shape(y_shape)  # the padded grid for block CS, the image shape otherwise
    assert expect_tensor(op.A_adjoint(y), grid).dtype == dtype
    gap, scale = adjoint_gap(op, x, y)
    assert gap <= (1e-10 if dtype == torch.float64 else 1e-4) * scale, (gap, scale)
    if dtype == torch.float64:  # linear: A(2 x + x') = 2 A x + A x'
        other = torch.randn(case.image, generator=gen, dtype=dtype)
        torch.testing.assert_close(op.A(2 * x + other), 2 * ax + op.A(other), rtol=1e-9, atol=1e-9)

    expect_tensor(op.init(y), grid)
    sigma = data.draw(st.one_of(st.just(0.0), st.floats(0.0, 10.0), st.floats(0, 10).map(np.float32)))
    noisy = expect_tensor(op.measure(x, noise_sigma=sigma, generator=generator(seed)), y_shape)
    again = op.measure(x, noise_sigma=sigma, generator=generator(seed))
    torch.testing.assert_close(noisy, again, rtol=1e-5, atol=1e-5)  # reproducible from the generator
    if sigma == 0:
        torch.testing.assert_close(noisy, ax)

    batch = case.image[0]
    z = torch.randn(grid, generator=gen, dtype=dtype)
    rho = data.draw(positive_steps(batch), label="rho")
    expect_tensor(op.gradient_step(z, y, rho), grid)
    mu = data.draw(positive_steps(batch), label="mu")
    estimate = outcome(op.hqs_step, z, y, mu)
    if isinstance(estimate, ValueError) and "numerically singular" in str(estimate):
        event("hqs_step: Phi Phi^T + mu I singular (clear ValueError)")
        return  # BlockCS: Phi Phi^T + mu I singular in floating point, the documented clear error
    expect_tensor(estimate, grid)
    if dtype == torch.float64:  # optimality of argmin ||y - A x||^2 + mu ||x - z||^2
        weight = batch_values(mu, batch).view(-1, *[1] * (z.ndim - 1))
        normal = op.A_adjoint(op.residual(estimate, y)) + weight * (estimate - z)
        size = norm(op.A_adjoint(op.A(estimate))) + norm(op.A_adjoint(y)) + norm(weight * estimate)
        size += norm(weight * z)
        assert norm(normal) <= 1e-7 * size, (norm(normal), size)


# ------------------------------------------------------------------------------------ bad tensor inputs
#: Corruptions of a valid image or measurement and the error each must give (None: a result or an error).
CORRUPTIONS: dict[str, type[Exception] | None] = {
    "int64": TypeError,
    "int32": TypeError,
    "uint8": TypeError,
    "bool": TypeError,
    "complex64": TypeError,
    "numpy": TypeError,
    "list": TypeError,
    "empty_axis": ValueError,
    "extra_axis": ValueError,
    "missing_axis": ValueError,
    "float16": None,
    "bfloat16": None,
    "nan": None,
    "inf": None,
}

#: (method, which argument is corrupted): the image side (A, measure, the iterate) or the measurement side.
CALLS = [
    ("A", "image"),
    ("measure", "image"),
    ("A_adjoint", "measurement"),
    ("init", "measurement"),
    ("gradient_step", "image"),
    ("gradient_step", "measurement"),
    ("hqs_step", "image"),
    ("hqs_step", "measurement"),
]


def corrupt(t: torch.Tensor, how: str, data: st.DataObject) -> Any:
    if how in ("int64", "int32", "uint8", "bool"):
        return (t * 3).to(getattr(torch, how))
    if how in ("float16", "bfloat16", "complex64"):
        return t.to(getattr(torch, how))
    if how == "numpy":
        return t.numpy()
    if how == "list":
        return t.tolist()
    if how == "empty_axis":
        shape = list(t.shape)
        shape[data.draw(st.integers(0, t.ndim - 1), label="empty axis")] = 0
        return t.new_zeros(shape)
    if how == "extra_axis":
        return t.unsqueeze(0)
    if how == "missing_axis":
        return t[0]
    bad = t.clone()
    index = data.draw(st.integers(0, t.numel() - 1), label="position")
    bad.view(-1)[index] = {"nan": math.nan, "inf": data.draw(st.sampled_from([math.inf, -math.inf]))}[how]
    return bad


def call(op: LinearOperator, method: str, image: Any, measurement: Any) -> Any:
    if method in ("A", "measure"):
        return outcome(getattr(op, method), image)
    if method in ("A_adjoint", "init"):
        return outcome(getattr(op, method), measurement)
    return outcome(getattr(op, method), image, measurement, 0.5)


@examples(400)
@given(
    case=any_case,
    how=st.sampled_from(sorted(CORRUPTIONS)),
    target=st.sampled_from(CALLS),
    seed=seeds,
    data=st.data(),
)
def test_bad_images_and_measurements_are_clear_errors(case, how, target, seed, data) -> None:
    op, gen = case.op.double(), generator(seed)
    method, side = target
    y_shape = op.measurement_shape(case.image)
    grid = op.image_shape(y_shape)
    image_shape = case.image if method in ("A", "measure") else grid  # the data steps run on the grid
    image = torch.randn(image_shape, generator=gen, dtype=torch.float64)
    measurement = torch.randn(y_shape, generator=gen, dtype=torch.float64)
    if side == "image":
        image = corrupt(image, how, data)
    else:
        measurement = corrupt(measurement, how, data)
    result = call(op, method, image, measurement)
    event(f"{how}: {type(result).__name__}")
    error = CORRUPTIONS[how]
    if error is not None:
        expect_error(result, error, f"{how} {side} passed to {method}")
        return
    out_shape = y_shape if method in ("A", "measure") else grid
    if how in ("nan", "inf"):  # values are not inspected (no device sync): the right shape, no raw error
        if not isinstance(result, Exception):
            expect_tensor(result, out_shape, finite=False)
        return
    if isinstance(op, BlurDownsample) and (side == "image" or method == "A_adjoint"):
        expect_error(result, TypeError, f"{how} {side} FFT'd in BlurDownsample.{method}")  # float32/64 only
        return
    out = expect_tensor(result, out_shape, finite=False)
    if method in ("A", "measure"):
        assert out.dtype == image.dtype


@examples(100)
@given(case=any_case, seed=seeds, data=st.data())
def test_measurements_of_another_shape_are_value_errors(case, seed, data) -> None:
    """A ``y`` that does not match the iterate (other batch size, size or layout) in the data steps."""
    op, gen = case.op.double(), generator(seed)
    y_shape = list(op.measurement_shape(case.image))
    grid = op.image_shape(tuple(y_shape))
    axis = data.draw(st.integers(0, len(y_shape) - 1), label="axis")
    y_shape[axis] += data.draw(st.integers(1, 3), label="extra")
    z = torch.randn(grid, generator=gen, dtype=torch.float64)
    y = torch.randn(y_shape, generator=gen, dtype=torch.float64)
    for method in ("gradient_step", "hqs_step"):
        expect_error(call(op, method, z, y), ValueError, f"measurement {tuple(y_shape)} for iterate {grid}")


# ------------------------------------------------------------------------------- parameters and steps
def wild_numbers(low: float, high: float) -> st.SearchStrategy[Any]:
    """What a user may pass as a number: in range or not, NaN/Inf/0/negative, NumPy, bool, str, complex."""
    return st.one_of(
        st.floats(low, high),
        st.floats(-1e4, 1e4),
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1.0]),
        st.integers(-3, 12),
        st.floats(low, high).map(np.float32),
        st.floats(-1e4, 1e4).map(np.float64),
        st.integers(-3, 12).map(np.int64),
        st.floats(low, high).map(lambda v: np.array(v)),
        st.sampled_from([True, False, np.bool_(True), None, "0.5", 0.5 + 0j, 1j, np.complex64(0.5), [0.5]]),
    )


def mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` two times in three, else ``wild`` (``st.one_of`` weighs each of wild's branches alike)."""
    return st.sampled_from([valid, valid, wild]).flatmap(lambda strategy: strategy)


def real_number(value: Any, arrays: bool = True) -> float | None:
    """``float(value)`` for a real Python/NumPy number (not bool, not complex), else None.

    ``arrays``: a 0-d NumPy array counts (as for step sizes); the CS ratio takes scalars only.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if arrays and isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return float(value)
    return None


def integer(value: Any) -> int | None:
    """``value`` when it is a Python ``int`` (not bool), else None: the rule for sizes and counts."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@examples(200)
@given(
    ratio=mostly(
        st.one_of(st.floats(1e-3, 1.0), st.floats(1e-3, 1.0).map(np.float32)), wild_numbers(1e-3, 1)
    ),
    block_size=mostly(st.integers(1, 6), wild_numbers(1, 6)),
    channels=mostly(st.integers(1, 3), wild_numbers(1, 3)),
    learnable=st.sampled_from([None, True, False, 0, 1]),
    seed=seeds,
    data=st.data(),
)
def test_block_cs_constructor_accepts_exactly_the_valid_parameters(
    ratio, block_size, channels, learnable, seed, data
) -> None:
    area = block_size * block_size if integer(block_size) is not None and block_size > 0 else 4
    rows = st.one_of(st.none(), st.integers(1, area))
    num_rows = data.draw(mostly(rows, st.one_of(st.integers(area + 1, area + 3), wild_numbers(1, area))))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        op = outcome(BlockCS, ratio, block_size, channels, learnable=learnable, num_rows=num_rows)
    r, b, c, n = real_number(ratio, arrays=False), integer(block_size), integer(channels), integer(num_rows)
    valid = r is not None and 0 < r <= 1 and b is not None and b >= 1 and c is not None and c >= 1
    valid = valid and (num_rows is None or (n is not None and 1 <= n <= b * b))
    call = f"BlockCS({ratio!r}, {block_size!r}, {channels!r}, num_rows={num_rows!r})"
    event("valid parameters" if valid else "invalid parameters")
    if not valid:
        expect_error(op, CLEAR_ERRORS, call)
        return
    assert isinstance(op, BlockCS), (call, op)
    assert op.learnable == (True if learnable is None else bool(learnable))
    if num_rows is None:
        assert 1 <= op.num_rows <= b * b and abs(op.num_rows - r * b * b) < 1 + 1e-6
    else:
        assert op.num_rows == num_rows
    x = torch.randn(2, c, b + 1, b, generator=generator(seed))
    y = expect_tensor(op.A(x), op.measurement_shape(tuple(x.shape)))
    expect_tensor(op.A_adjoint(y), op.image_shape(tuple(y.shape)))


@examples(150)
@given(
    scale=mostly(st.sampled_from([1, 2, 3, 4, 2.0, 3.0]), wild_numbers(1, 4)),
    step=mostly(st.integers(1, 4), wild_numbers(1, 3)),
)
def test_scale_and_dispersion_step_accept_exactly_positive_integers(scale, step) -> None:
    op = outcome(BlurDownsample, torch.ones(1, 1), scale)
    number = isinstance(scale, (int, float)) and not isinstance(scale, bool)  # Python ints, integral floats
    if not number or not math.isfinite(scale) or not float(scale).is_integer() or scale < 1:
        expect_error(op, ValueError, f"scale={scale!r}")
    else:
        assert op.scale == int(scale)
    cassi = outcome(CASSI, torch.ones(2, 3), step)
    if integer(step) is None or step < 1:
        expect_error(cassi, ValueError, f"step={step!r}")
    else:
        expect_tensor(cassi.A(torch.ones(1, 2, 2, 3)), (1, 2, 3 + step))


#: Entries poked into a constructor's matrix/mask/kernel, and whether each keeps it valid.
SPECIAL_ENTRIES = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, -0.0])


@st.composite
def array_arguments(draw: st.DrawFn, shape: tuple[int, ...], unit_sum: bool = False) -> tuple[Any, str]:
    """A constructor tensor: valid of ``shape`` or spoiled (special entries, dtype, shape, container).

    ``unit_sum``: real values are scaled to sum to 1 where they can be (a blur kernel's rule).
    """
    gen = generator(draw(seeds))
    value = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.1
    kinds = [
        "valid",
        "special",
        "complex",
        "int",
        "bool",
        "empty",
        "1-d",
        "3-d",
        "0-d",
        "list",
        "numpy",
        "str",
    ]
    how = draw(st.sampled_from(kinds))
    if how == "special":
        entry = draw(SPECIAL_ENTRIES)
        value.view(-1)[draw(st.integers(0, value.numel() - 1))] = entry
        how = f"entry {entry}"
    total = value.sum()
    if unit_sum and torch.isfinite(total) and total != 0:
        value /= total
    converted = {
        "complex": lambda: value.to(torch.complex64),
        "int": lambda: torch.ones(shape, dtype=torch.int64),
        "bool": lambda: torch.ones(shape, dtype=torch.bool),
        "empty": lambda: value[:0],
        "1-d": lambda: value.reshape(-1),
        "3-d": lambda: value[None],
        "0-d": lambda: value.view(-1)[0],
        "list": lambda: value.tolist(),
        "numpy": lambda: value.numpy(),
        "str": lambda: "mask.mat",
    }
    return converted.get(how, lambda: value)(), how


def finite_2d(how: str) -> bool:
    """Whether a spoiled constructor tensor is still a finite real 2-D array."""
    if how.startswith("entry"):
        return math.isfinite(float(how.split()[1]))
    return how in ("valid", "int", "bool", "list", "numpy")


@examples(150)
@given(data=st.data(), height=st.integers(1, 5), width=st.integers(1, 5), step=st.integers(1, 3))
def test_cassi_mask_is_checked(data, height, width, step) -> None:
    mask, how = data.draw(array_arguments((height, width)), label="mask")
    op = outcome(CASSI, mask, step)
    if not finite_2d(how):
        expect_error(op, TypeError if how in ("complex", "str") else ValueError, f"{how} mask")
        return
    x = torch.rand(2, 3, height, width, dtype=torch.float64)
    expect_tensor(op.A(x), op.measurement_shape(tuple(x.shape)))
    expect_tensor(op.hqs_step(x, op.A(x), 0.1), tuple(x.shape))


@examples(150)
@given(data=st.data(), b=st.integers(1, 4), seed=seeds)
def test_block_cs_matrix_is_checked(data, b, seed) -> None:
    rows = data.draw(st.integers(1, b * b), label="rows")
    matrix, how = data.draw(array_arguments((rows, b * b)), label="matrix")
    op = outcome(BlockCS, rows / (b * b), b, matrix=matrix)
    if not finite_2d(how):
        expect_error(op, TypeError if how in ("complex", "str") else ValueError, f"{how} matrix")
        return
    x = torch.rand(2, 1, 2 * b, b, dtype=torch.float64, generator=generator(seed))
    y = expect_tensor(op.double().A(x), op.measurement_shape(tuple(x.shape)))
    expect_tensor(op.gradient_step(x, y, 0.5), tuple(x.shape))
    estimate = outcome(op.hqs_step, x, y, 0.5)
    if not isinstance(estimate, ValueError):  # an all-ones (rank-1) matrix may be singular: a clear error
        expect_tensor(estimate, tuple(x.shape))


@examples(150)
@given(data=st.data(), kh=st.integers(1, 4), kw=st.integers(1, 4), scale=st.integers(1, 3))
def test_blur_kernel_is_checked(data, kh, kw, scale) -> None:
    kernel, how = data.draw(array_arguments((kh, kw), unit_sum=True), label="kernel")
    op = outcome(BlurDownsample, kernel, scale)
    if how in ("int", "bool") and kh * kw > 1:  # all ones: sums to kh*kw, not 1
        expect_error(op, ValueError, f"{how} kernel summing to {kh * kw}")
        return
    if not finite_2d(how):
        expect_error(op, TypeError if how in ("complex", "str") else ValueError, f"{how} kernel")
        return
    if how.startswith("entry") and kh * kw == 1 and float(how.split()[1]) == 0:
        expect_error(op, ValueError, "a 1x1 kernel [[0]] sums to 0")
        return
    x = torch.rand(2, 2, scale * kh, scale * kw, dtype=torch.float64)
    y = expect_tensor(op.double().A(x), op.measurement_shape(tuple(x.shape)))
    expect_tensor(op.hqs_step(x, y, 0.1), tuple(x.shape))


def wild_steps(batch: int) -> st.SearchStrategy[Any]:
    """Step sizes in all forms: wild numbers and tensors of any dtype and (wrong) shape."""
    shapes = st.sampled_from([(), (1,), (batch,), (batch + 1,), (0,), (batch, 1), (1, 1)])
    dtypes = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool, torch.complex64])
    tensors = st.builds(lambda shape, dtype: torch.full(shape, 2.0).to(dtype), shapes, dtypes)
    return st.one_of(wild_numbers(1e-4, 1e4), tensors)


def step_is_valid(step: Any, batch: int, allow_zero: bool = False) -> bool:
    if isinstance(step, torch.Tensor):
        real = not step.is_complex() and step.dtype != torch.bool
        return real and (step.ndim == 0 or (step.ndim == 1 and step.shape[0] in (1, batch)))
    number = real_number(step)
    return number is not None and math.isfinite(number) and (number > 0 or (allow_zero and number == 0))


@examples(250)
@given(case=any_case, data=st.data(), seed=seeds)
def test_step_sizes_and_noise_levels_accept_exactly_the_valid_values(case, data, seed) -> None:
    op, gen = case.op.double(), generator(seed)
    batch = case.image[0]
    y_shape = op.measurement_shape(case.image)
    grid = op.image_shape(y_shape)
    z = torch.randn(grid, generator=gen, dtype=torch.float64)
    y = torch.randn(y_shape, generator=gen, dtype=torch.float64)
    for method in ("gradient_step", "hqs_step"):
        step = data.draw(wild_steps(batch), label=method)
        result = outcome(getattr(op, method), z, y, step)
        event(f"{method}: {'valid' if step_is_valid(step, batch) else 'invalid'} step")
        if not step_is_valid(step, batch):
            expect_error(result, CLEAR_ERRORS, f"{method} with step {step!r}")
        elif not (isinstance(result, ValueError) and "numerically singular" in str(result)):
            expect_tensor(result, grid)
    sigma = data.draw(st.one_of(wild_numbers(0.0, 10.0), st.just(torch.tensor(0.1))), label="noise_sigma")
    x = torch.randn(case.image, generator=gen, dtype=torch.float64)
    result = outcome(op.measure, x, noise_sigma=sigma, generator=gen)
    if isinstance(sigma, torch.Tensor) or not step_is_valid(sigma, batch, allow_zero=True):
        expect_error(result, CLEAR_ERRORS, f"noise_sigma={sigma!r}")
    else:
        expect_tensor(result, y_shape)
