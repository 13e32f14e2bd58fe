"""Operating a topology on one machine: ``chatscale run`` (the supervisor) and
``chatscale top``."""
