"""Input validation at the public boundary. The core never sees an edge case."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor


def check_real(name: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real number (not a bool), returned as float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (not a bool) no smaller than `minimum`."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return value


def all_finite(x: Tensor) -> bool:
    """Whether every entry of the real tensor x is finite, from one min/max reduction (one host read).

    NaN propagates to both the min and the max, +inf shows in the max and -inf in the min, so both are finite
    exactly when every entry is. `torch.isfinite(x).all()` gives the same answer through a boolean tensor of
    x's size and costs some fifteen times more on the CPU (about 240 against 15 microseconds at 65 536 floats).
    """
    if x.numel() == 0:
        return True
    return all(math.isfinite(v) for v in value_range(x))


def value_range(x: Tensor) -> tuple:
    """(min, max) of the non-empty tensor x as Python numbers (ints for an integer tensor), in one host read."""
    lo, hi = torch.aminmax(x.detach())
    return tuple(torch.stack((lo, hi)).tolist())


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is enabled for the device type (torch >= 2.4 takes it as an argument)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def check_output(
    name: str, out: Any, x: Tensor, *, shape_rule: str = "its output has the shape of x", dtype: bool = True,
    cast_under_autocast: bool = False,
) -> Tensor:
    """The output of a user's function `name` evaluated at x: a tensor shaped like x, on x's device and (with dtype)
    of x's dtype.

    With cast_under_autocast a floating output of another dtype is cast to x's where autocast is on (a network
    under train(bf16=True) returns its lower precision). Without the dtype rule the output must still be a real
    floating tensor: an integer one would enter the losses as constants, with no gradient to train on.
    """
    if not isinstance(out, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(out).__name__}.")
    if out.shape != x.shape:
        raise ValueError(f"{name} returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; {shape_rule}.")
    if out.device != x.device:  # else torch fails later, in the solver's arithmetic, naming no function
        raise ValueError(
            f"{name} returned a tensor on device {out.device} for x on device {x.device}; return it on x's device "
            "(move the model with .to(x.device), or create new tensors with device=x.device)."
        )
    if dtype and out.dtype != x.dtype:
        if cast_under_autocast and out.is_floating_point() and _autocast_on(x.device.type):
            return out.to(x.dtype)
        raise TypeError(f"{name} returned dtype {out.dtype} for x of dtype {x.dtype}; return x's dtype.")
    if not out.is_floating_point():
        raise TypeError(f"{name} returned dtype {out.dtype} for x of dtype {x.dtype}; return a floating tensor.")
    return out


def check_like(name: str, value: Any, like: Tensor, like_name: str) -> Tensor:
    """A finite tensor with the shape, dtype and device of `like` (an argument given alongside it, e.g. noise for x0)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor shaped like {like_name} {tuple(like.shape)}, got {type(value).__name__}.")
    if value.shape != like.shape:
        raise ValueError(f"{name} must be a tensor shaped like {like_name} {tuple(like.shape)}, got {tuple(value.shape)}.")
    if value.dtype != like.dtype or value.device != like.device:
        raise TypeError(
            f"{name} must have {like_name}'s dtype and device ({like.dtype}, {like.device}), got ({value.dtype}, {value.device})."
        )
    if not all_finite(value):
        raise ValueError(f"{name} holds non-finite values (NaN or inf).")
    return value


def check_data(name: str, x: Any, *, min_ndim: int = 2) -> Tensor:
    """A floating tensor of shape (B, *dims) holding finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, *dims), got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}; convert with {name}.float().")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have shape (batch, *dims) with at least {min_ndim} dimensions, got shape {tuple(x.shape)}; "
            f"a batch of D-dimensional vectors has shape (B, D)."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch: shape {tuple(x.shape)}.")
    if x.ndim > 1 and x[0].numel() == 0:
        raise ValueError(f"{name} has empty data dimensions: shape {tuple(x.shape)}; expected (batch, *dims) with D >= 1.")
    if not all_finite(x):
        raise ValueError(f"{name} holds non-finite values (NaN or inf).")
    return x


def check_time(name: str, t: Any, batch: int | None, T: float, *, low: float = 0.0) -> Tensor:
    """Times of shape (B,), floating, within [low, T]; batch=None accepts any B."""
    want = "(B,)" if batch is None else f"({batch},)"
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got {type(t).__name__}.")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}.")
    if t.ndim != 1 or t.shape[0] == 0 or (batch is not None and t.shape[0] != batch):
        raise ValueError(f"{name} must have shape {want}, one time per sample, got shape {tuple(t.shape)}.")
    lo, hi = (float(v) for v in value_range(t))
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < low or hi > T:
        raise ValueError(f"{name} must lie in [{low}, {T}], got values in [{lo}, {hi}].")
    return t


def check_eps(eps: Any, T: float) -> float:
    eps = check_real("eps", eps, positive=True)
    if eps >= T:
        raise ValueError(f"eps must lie in (0, T={T}), got {eps}.")
    return eps


def check_choice(name: str, value: Any, registry: dict, methods: tuple[str, ...] = ()) -> Any:
    """Resolve a string through a registry; anything else is returned as the object it is, once it has `methods`."""
    if isinstance(value, str):
        if value not in registry:
            raise ValueError(f"{name} must be one of {sorted(registry)}, got {value!r}.")
        return registry[value]
    missing = [m for m in methods if not hasattr(value, m)]
    if missing:
        raise TypeError(
            f"{name} must be one of {sorted(registry)} or an object with {', '.join(methods)}, got "
            f"{type(value).__name__} {value!r} (no {', '.join(missing)})."
        )
    return value


def check_float_dtype(name: str, dtype: Any, *, optional: bool = True) -> torch.dtype | None:
    """A floating torch.dtype, or None when `optional`."""
    if (dtype is None and optional) or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    raise TypeError(
        f"{name} must be a floating torch.dtype (torch.float32, torch.float64, ...)"
        f"{' or None' if optional else ''}, got {dtype!r}."
    )


HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_not_half(name: str, x: Tensor, why: str) -> Tensor:
    """x unless it is in half precision (float16 or bfloat16), which `why` cannot resolve: TypeError naming it."""
    if x.dtype in HALF_DTYPES:
        raise TypeError(
            f"{name} has dtype {x.dtype}, but {why}; pass {name}.float() (to compute the network in half precision, "
            "keep its weights in float32 and call it under torch.autocast)."
        )
    return x


def check_generator(generator: Any, device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    if generator.device.type != torch.device(device).type:
        raise ValueError(
            f"generator lives on {generator.device} but the samples on {device}; "
            f"create it with torch.Generator(device={str(device)!r})."
        )
    return generator


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")
    return value


def check_callable(name: str, fn: Any, signature: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable as {signature}, got {type(fn).__name__}.")


def check_numbers(name: str, values: Any, kind: type, what: str) -> list:
    """The entries of a sequence, each an instance of `kind` (Real or Integral; bools refused); `what` says what
    the sequence should be, for the error."""
    try:
        out = list(values)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {type(values).__name__}.") from None
    if any(isinstance(v, bool) or not isinstance(v, kind) for v in out):
        raise TypeError(f"{name} must hold {'integers' if kind is Integral else 'real numbers'}, got {out!r}.")
    return out


def check_sigmas(name: str, sigmas: Any, *, device: torch.device | str | None = None) -> Tensor:
    """Noise levels sigma_1 > sigma_2 > ... > sigma_L > 0 as a float64 tensor of shape (L,).

    Accepts a 1-D floating tensor or a sequence of real numbers; raises naming `name` otherwise.
    """
    if isinstance(sigmas, Tensor):
        if not sigmas.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor of shape (L,), got dtype {sigmas.dtype}.")
        s = sigmas.detach().to(dtype=torch.float64, device=device)
    else:
        values = check_numbers(name, sigmas, Real, "a 1-D tensor or a sequence of noise levels")
        s = torch.tensor(values, dtype=torch.float64, device=device)
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError(f"{name} must have shape (L,) with L >= 1, got shape {tuple(s.shape)}.")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"{name} must be finite and > 0, got {s.tolist()}.")
    if s.numel() > 1 and not bool((s[1:] < s[:-1]).all()):
        raise ValueError(
            f"{name} must be strictly decreasing (sigma_1 > ... > sigma_L, NCSN's order), got {s.tolist()}; "
            "build them with ncsn_sigmas(sigma_1, sigma_L, L)."
        )
    return s
