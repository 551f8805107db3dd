"""Remote execution: the SQL job queue, operations, platform matching and leases.

  leases.py     the lease contract shared with workers (payload/result packing)
  schema.py     the SQL tables (jobs, operations, bots)
  jobqueue.py   the durable queue: enqueue/merge, assignment, completion, requeue
  notifier.py   wake-ups in-process and across processes (PG LISTEN/NOTIFY, local peers, safety-net poll)
  localpeers.py wake-ups between the server processes of one host sharing an SQLite queue
  platform.py   platform requirements and worker capabilities
  inputs.py     checking that an action's inputs are all in the CAS
  opfilter.py   the ListOperations filter language
  operations.py turning jobs into google.longrunning Operations
  scheduler.py  Execute, WaitExecution and the Operations API over the queue
  botsessions.py the Remote Workers API side: sessions and leases
  farm.py       one process's share of the farm: wiring, start/stop, draining, housekeeping
  drainingbots.py BotSessions that give no new leases while draining and count busy bots
  localworkers.py the `granary worker` processes `granary serve` starts
"""
