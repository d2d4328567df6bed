"""Every periodic job, registered in one place (run by `manage.py rqcron portal.cron`).

Each job is idempotent, so a second scheduler or a restart never does harm
beyond a redundant run.
"""

from rq import cron

from backups import jobs as backup_jobs
from incidents import jobs as incident_jobs
from portal import audit
from portal import jobs as portal_jobs
from pra import jobs as pra_jobs

# The ticks and sweeps run on "control", a queue with its own worker and only short
# jobs: a long backup or a dead pra worker cannot delay a slot or stop a reaper.
cron.register(portal_jobs.resend_stuck_notifications, queue_name="control", interval=120)
cron.register(pra_jobs.sweep, queue_name="control", interval=30)
cron.register(incident_jobs.sweep, queue_name="control", interval=30)
cron.register(backup_jobs.tick, queue_name="control", cron="* * * * *")
cron.register(audit.periodic_anchor, queue_name="control", interval=audit.anchor_interval())

# Housekeeping that may take a while.
cron.register(portal_jobs.clear_expired_sessions, queue_name="default", cron="17 3 * * *")
cron.register(incident_jobs.prune, queue_name="default", cron="7 * * * *")
