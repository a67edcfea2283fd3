"""One merge method, parsed and validated in one place: `MergeSpec`.

Spellings (all equal): on the command line `--method ema --alpha 0.2` (or `--method ema:0.2`),
in configs and method lists the string `ema:0.2`; explicit weights are `--weights 1,2,3`
(method `weights`). `str(spec)` gives the config spelling back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pmalopti.pma.weights import merge_weights, normalize_weights

SpecMethod = Literal["sma", "ema", "wma", "weights"]
SPEC_METHODS: tuple[SpecMethod, ...] = ("sma", "ema", "wma", "weights")
LABELS = {"sma": "SMA", "wma": "WMA", "weights": "weights"}


@dataclass(frozen=True)
class MergeSpec:
    """How checkpoints M_1 (oldest) ... M_N (newest) are weighted; see `weights.merge_weights`."""

    method: SpecMethod = "sma"
    """sma (equal), wma (linear, newest weighs most), ema (recursion with alpha) or weights"""
    alpha: float | None = None
    """EMA coefficient in (0, 1]; only for ema (the paper tests 0.1 and 0.2)"""
    weights: tuple[float, ...] | None = None
    """explicit weights, oldest first (normalised to sum 1); only for method 'weights'"""

    def __post_init__(self) -> None:
        if self.method not in SPEC_METHODS:
            raise ValueError(
                f"merge method {self.method!r} is not allowed; choose sma, wma or ema "
                "(ema needs an alpha: --method ema --alpha 0.2, or ema:0.2)"
            )
        if self.method == "ema":
            a = self.alpha
            if a is None:
                raise ValueError(
                    "ema needs an alpha: --method ema --alpha A (ema:A in a config); the paper "
                    "uses 0.1 or 0.2 (0.2 was better)"
                )
            if isinstance(a, bool) or not isinstance(a, int | float) or not 0.0 < a <= 1.0:
                raise ValueError(f"ema alpha must be in (0, 1], got {a!r}")
        elif self.alpha is not None:
            raise ValueError(f"--alpha is only used by --method ema, not by {self.method}")
        if self.method == "weights":
            if not self.weights:
                raise ValueError("method 'weights' needs the weights, e.g. --weights 1,2,3")
            object.__setattr__(self, "weights", tuple(normalize_weights(self.weights)))
        elif self.weights is not None:
            raise ValueError("explicit weights replace --method/--alpha; give one or the other")

    @classmethod
    def parse(cls, text: str, alpha: float | None = None) -> MergeSpec:
        """'sma' | 'wma' | 'ema:0.2' | 'ema' with `alpha` -> a spec (ValueError if invalid)."""
        if ":" in str(text) and alpha is not None:
            raise ValueError(f"give the alpha once: {text!r} already holds it")
        name, inline = cls.split(str(text).strip().lower())
        if inline is not None:
            if not math.isfinite(inline):
                raise ValueError(f"ema alpha must be in (0, 1], got {inline}")
            alpha = inline
        if name == "weights":
            raise ValueError("explicit weights are given with --weights W1,W2,...")
        return cls(name, alpha)  # type: ignore[arg-type]

    @staticmethod
    def split(text: str) -> tuple[str, float | None]:
        """'ema:0.2' -> ('ema', 0.2), 'sma' -> ('sma', None): the name and the inline alpha, as
        written (ValueError if the alpha is not a number; name and range are checked by `parse`)."""
        name, sep, rest = str(text).partition(":")
        if not sep:
            return name, None
        try:
            alpha = float(rest)
        except ValueError:
            raise ValueError(f"merge method {text!r}: {rest!r} is not a number") from None
        return name, alpha

    @classmethod
    def from_weights(cls, text: str | Sequence[float]) -> MergeSpec:
        """'1,2,3' or a sequence of numbers -> method 'weights'."""
        if isinstance(text, str):
            try:
                values = tuple(float(w) for w in text.split(","))
            except ValueError:
                raise ValueError(f"--weights: expected numbers like 1,2,3, got {text!r}") from None
        else:
            values = tuple(float(w) for w in text)
        return cls("weights", None, values)

    @classmethod
    def from_options(
        cls, method: str | None = None, alpha: float | None = None, weights: str | None = None
    ) -> MergeSpec:
        """The command-line options `--method`, `--alpha`, `--weights` as one spec (default sma)."""
        if weights is not None:
            if method is not None or alpha is not None:
                raise ValueError("--weights replaces --method/--alpha; give one or the other")
            return cls.from_weights(weights)
        return cls.parse(method or "sma", alpha)

    @property
    def order_sensitive(self) -> bool:
        """True when the weights depend on which checkpoint is oldest (all but sma)."""
        return self.method != "sma"

    def merge_weights(self, n: int) -> list[float]:
        """w_1..w_N for `n` checkpoints, oldest first; they sum to 1."""
        if self.method == "weights":
            assert self.weights is not None
            if len(self.weights) != n:
                raise ValueError(f"--weights has {len(self.weights)} values for {n} checkpoints")
            return list(self.weights)
        return merge_weights(self.method, n, self.alpha)

    @property
    def label(self) -> str:
        """'EMA α=0.2', 'SMA', ... for tables and figures."""
        return f"EMA α={self.alpha:g}" if self.method == "ema" else LABELS[self.method]

    def __str__(self) -> str:
        if self.method == "ema":
            return f"ema:{self.alpha:g}"
        if self.method == "weights":
            return "weights:" + ",".join(f"{w:g}" for w in self.weights or ())
        return self.method
