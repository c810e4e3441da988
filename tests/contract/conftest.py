"""Shared setup of the contract tests: detailed assertion messages from the shipped suites."""

import pytest

pytest.register_assert_rewrite("datadl.testing")
