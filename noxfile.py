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
    """Side-by-side benchmarks against pure JAX, flax.nnx and Equinox.

    ``nox -s bench`` runs the CPU benchmarks (split/merge, jit step overhead,
    scan compile time, model families vs torch) and the GPT script, which measures only on a GPU
    (on CPU it runs its ``--smoke`` size). ``nox -s bench -- --quick`` makes
    every script do a short smoke run.
    """
    session.install("-e", ".[bench,interop]")
    quick = "--quick" in session.posargs
    extra = ["--quick"] if quick else []
    session.run("python", "benchmarks/bench_graph.py", *extra)
    session.run("python", "benchmarks/bench_jit.py", *extra)
    session.run("python", "benchmarks/bench_scan.py", *extra)
    session.run("python", "benchmarks/bench_models.py", *extra)
    gpu = session.run(
        "python", "-c", "import jax; print(jax.devices()[0].platform)", silent=True
    )
    on_gpu = gpu is not None and "gpu" in str(gpu)
    session.run("python", "benchmarks/bench_gpu_gpt.py", *([] if on_gpu and not quick else ["--smoke"]))


@nox.session
def docs(session: nox.Session) -> None:
    """Run every code block in the docs, then build the site with ``mkdocs build --strict``."""
    # bench brings flax and equinox, so the comparison pages run in full.
    session.install("-e", ".[docs,test,bench]")
    session.run("python", "-m", "pytest", "tests/test_docs.py", "-p", "no:cacheprovider")
    session.run("mkdocs", "build", "--strict", *session.posargs)
