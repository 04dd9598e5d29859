"""Developer sessions: ``nox -s tests``, ``nox -s parity``, ``nox -s bench``, ``nox -s docs``."""

import nox

nox.options.sessions = ["tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, as CI runs it."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def parity(session: nox.Session) -> None:
    """Numerical parity tests against flax (and PyTorch when available)."""
    session.install("-e", ".[test,parity]")
    session.run("python", "-m", "pytest", "-k", "parity or flax", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against pure JAX, flax.nnx and Equinox."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/bench_graph.py", *session.posargs)
