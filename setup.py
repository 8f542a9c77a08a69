"""Build of the optional C extension (everything else is in pyproject.toml).

``mcs_edge._fastfwd`` is the media relay's in-process forwarding table (docs/performance.md,
"In-process forwarding"). It is optional: without a compiler the install still succeeds and the
relay runs its pure-Python path (``media.offload = "auto"`` then means the Python path, as
``"off"`` always does). CI sets ``CI=1``, under which tests/tx/test_fastfwd.py fails when the module is missing.

``mcs_edge._sipscan`` cuts the head of a SIP message into its header fields (docs/performance.md,
"A C scanner for the head"); optional the same way: without it ``mcs_edge/core/sip/message.py``
runs its Python path (tests/core/sip/test_sipscan.py fails under ``CI=1`` when it is missing).

``mcs_edge._wirescan`` decodes whole SIP WebSocket data frames (unmasking) and reads the five headers
a refusal under overload echoes (docs/performance.md, "The refusal path in fewer steps"); optional
the same way: without it ``core/websocket/rfc6455.py`` and ``core/sip/shed.py`` run their Python
paths (tests/core/sip/test_wirescan.py fails under ``CI=1`` when it is missing).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mcs_edge._fastfwd",
            ["mcs_edge/_fastfwd.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "mcs_edge._sipscan",
            ["mcs_edge/_sipscan.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "mcs_edge._wirescan",
            ["mcs_edge/_wirescan.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
