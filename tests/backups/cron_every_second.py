"""The backups tick registered as in ``portal.cron`` (on the control queue), but every second.

Used by the schedule tests with real ``rqcron`` and workers: slots there are
seconds apart (6-field cron), so a test waits seconds, not minutes.
"""

from rq import cron

from backups import jobs

cron.register(jobs.tick, queue_name="control", interval=1)
