"""The shipped Alertmanager routing (``alertmanager.yml``) and templates, as package data, so
``gpuwarden up`` finds them through ``importlib.resources`` in an installed wheel too."""
