"""The reference writes ``./nc_workspace/<timestamp>/`` folders relative to the working
directory; the client tests run in a temporary one so the checkout stays clean."""

import os

import pytest


@pytest.fixture(autouse=True, scope="module")
def _reference_workspace_in_tmp(tmp_path_factory):
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("reference_workspace"))
    try:
        yield
    finally:
        os.chdir(before)
