"""``jax.random`` shorthands on RNG streams and Contexts (flax.nnx's ``rngs.normal((2, 3))``).

Each shorthand draws one fresh key from the object (``self()``) and calls the
``jax.random`` function with it; the initializer shorthands
(``rngs.lecun_normal()``) return an initializer that draws its key when
called, so ``rngs.lecun_normal()((3, 4))`` needs no key argument.

>>> import nnxlite as nnx
>>> rngs = nnx.Rngs(0)
>>> rngs.normal((2, 3)).shape, rngs.params.uniform((4,)).shape
((2, 3), (4,))
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax


RANDOM_FUNCTIONS = (
    "bits", "uniform", "randint", "permutation", "choice", "normal", "multivariate_normal", "truncated_normal",
    "bernoulli", "beta", "cauchy", "dirichlet", "exponential", "gamma", "loggamma", "poisson", "gumbel",
    "categorical", "laplace", "logistic", "pareto", "t", "chisquare", "f", "rademacher", "maxwell",
    "double_sided_maxwell", "weibull_min", "orthogonal", "generalized_normal", "ball", "rayleigh", "wald",
    "geometric", "triangular", "lognormal", "binomial", "multinomial",
)

# Initializer constructors whose names do not clash with a jax.random function.
INITIALIZERS = (
    "delta_orthogonal", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "kaiming_normal",
    "kaiming_uniform", "lecun_normal", "lecun_uniform", "variance_scaling", "xavier_normal", "xavier_uniform",
)


def _random_method(name: str) -> Callable:
    fn = getattr(jax.random, name, None)

    def method(self, *args: Any, **kwargs: Any) -> jax.Array:
        if fn is None:
            raise AttributeError(f"jax.random.{name} does not exist in this jax version.")
        return fn(self(), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``jax.random.{name}(key, *args, **kwargs)`` with a fresh key from this stream."
    return method


def _initializer_method(name: str) -> Callable:
    def method(self, *args: Any, **kwargs: Any) -> Callable:
        init = getattr(jax.nn.initializers, name)(*args, **kwargs)

        @functools.wraps(init)
        def keyless(*init_args: Any, **init_kwargs: Any) -> jax.Array:
            return init(self(), *init_args, **init_kwargs)

        return keyless

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``jax.nn.initializers.{name}(...)`` as an initializer that draws its key from this stream."
    return method


class RandomMethods:
    """Mixin: ``jax.random`` functions and initializers as methods of anything callable for a key."""




for _name in RANDOM_FUNCTIONS:
    setattr(RandomMethods, _name, _random_method(_name))
for _name in INITIALIZERS:
    setattr(RandomMethods, _name, _initializer_method(_name))
del _name
