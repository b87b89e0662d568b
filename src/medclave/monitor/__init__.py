"""Access monitoring (issue 16): learn each user's normal access to patients' records from the
access events (:mod:`medclave.auth.access`), score new events against it, and raise explained,
deduplicated alerts to a file or a webhook (``medclave monitor``).

:mod:`~medclave.monitor.model` holds the directory, the per-user baselines and the scorer;
:mod:`~medclave.monitor.alerts` the alerts, their deduplication and sinks;
:mod:`~medclave.monitor.simulate` a hospital built from Synthea care relationships with labelled
misuse injected; :mod:`~medclave.monitor.evaluate` the evaluation (AUROC, recall at a 1% alert
rate, event-to-alert time). Layer 4, beside the services: it reads events, never a service.
"""
