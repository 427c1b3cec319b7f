"""Imported first by the forkserver that starts Nipype's MultiProc workers
(:func:`cmbdetect.workflows.plugins.prepare_worker_processes`): every worker ignores Ctrl-C, which the main
process handles (it stops the workers and removes the work folders), and shows Nipype's log lines only when
the main process was run with ``-v``."""
import logging
import os
import signal

import nipype  # noqa: F401  (nipype sets its loggers' levels when first imported: import it before changing them)

from cmbdetect.workflows.plugins import NIPYPE_LOGGERS, VERBOSE_WORKERS_ENV

signal.signal(signal.SIGINT, signal.SIG_IGN)
for _name in NIPYPE_LOGGERS:
    logging.getLogger(_name).setLevel(logging.INFO if os.environ.get(VERBOSE_WORKERS_ENV) == "1" else logging.CRITICAL)
