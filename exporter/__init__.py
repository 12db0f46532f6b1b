"""gpuwarden's NVML exporter: GPU health metrics for Prometheus (``gpuwarden-exporter``).

Layout: ``nvml`` (the library boundary), ``collectors/`` (one module per concern, registered in
``collectors/__init__``), ``sampler`` (reader threads, single-flight collections, deadline),
``events`` (XIDs), ``service`` (NVML init with backoff), ``collector`` (the Prometheus
collector), ``exposition`` + ``server`` (HTTP), ``cli``; ``sim/`` is the simulated fleet.
"""
