"""manage.py commands: run_flower."""
