"""Every periodic job, registered in one place (run by `manage.py rqcron portal.cron`).

Each job is idempotent, so a second scheduler or a restart never does harm
beyond a redundant run.
"""

from rq import cron

from portal import jobs as portal_jobs
from pra import jobs as pra_jobs

cron.register(portal_jobs.clear_expired_sessions, queue_name="default", cron="17 3 * * *")

cron.register(pra_jobs.sweep, queue_name="pra", interval=30)
