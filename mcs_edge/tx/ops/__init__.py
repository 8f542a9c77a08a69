"""Operations adapters. In: admin requests on ``listen.admin`` (``admin``), scrapes of ``/metrics``
(``metrics``), SIGTERM (``drain``), worker processes (``workers``). Out: JSON answers, Prometheus text, JSON logs
(``logs``)."""
