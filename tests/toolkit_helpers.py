"""Shared fixtures for the toolkit tests (pydl.models, pydl.datasets, pydl.demo).

Imported by name into each test module (``from toolkit_helpers import ...``) rather than
put in conftest.py, so the one-thread setting applies to these tests only.
"""

import pytest
import torch


@pytest.fixture(autouse=True, name="one_thread")
def one_thread_fixture():
    # The toolkit's models are tiny; on a shared 2-core machine extra OpenMP threads
    # spin against other processes and make runs many times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", name="digits")
def digits_fixture():
    """{form: (X_train, X_test, y_train, y_test)} for the forms the models read."""
    pytest.importorskip("sklearn", reason="scikit-learn (the toolkit extra) not installed")
    from pydl.datasets import load_digits

    return {form: load_digits(form) for form in ("images", "sequences", "patches")}
