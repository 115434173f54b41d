"""The test suite. Importing it registers the objectives of the method packages, as the
entry points do: a script that a test launches imports tests.helpers, not conftest."""
import dim  # noqa: F401
import implicit_gen  # noqa: F401
