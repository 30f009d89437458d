"""Shared bits for the toolkit tests (pydl.models, pydl.datasets, pydl.demo)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # The toolkit's models are tiny; on a shared 2-core machine extra OpenMP threads
    # spin against other processes and make runs many times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    """{form: (X_train, X_test, y_train, y_test)} for the forms the models read."""
    pytest.importorskip("sklearn", reason="scikit-learn (the toolkit extra) not installed")
    from pydl.datasets import load_digits

    return {form: load_digits(form) for form in ("images", "sequences", "patches")}
