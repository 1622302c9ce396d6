"""Monitoring: the drift job, Prometheus configuration and alert rules, Grafana dashboards."""
