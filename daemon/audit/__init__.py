"""The tamper-evident audit log: a hash-chained, optionally signed JSON-lines file and the tools that read it.

:mod:`.log` appends (``AuditLog``), :mod:`.verify` holds the record format and checks or reads a log
(``verify_log``, ``read_records``), :mod:`.settings` is the ``audit`` section of the configuration.
"""
