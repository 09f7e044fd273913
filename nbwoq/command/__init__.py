"""The ``nbwoq`` command, on top of the file formats: argument parsing (``cli``), the
streamed, atomic, resumable run (``run``, ``resume``), its report (``report``) and the
generated demo model (``demo_model``). Nothing below this package imports it."""
