"""The launcher box: the ``engine`` command (and, later, the supervisor)."""
