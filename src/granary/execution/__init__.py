"""Remote execution: the SQL job queue, operations, platform matching and leases.

  leases.py     the lease contract shared with workers (payload/result packing)
  schema.py     the SQL tables (jobs, operations, bots)
  jobqueue.py   the durable queue: enqueue/merge, assignment, completion, requeue
  notifier.py   in-process events plus cross-process polling (and PG LISTEN/NOTIFY)
  platform.py   platform requirements and worker capabilities
  inputs.py     checking that an action's inputs are all in the CAS
  opfilter.py   the ListOperations filter language
  operations.py turning jobs into google.longrunning Operations
  scheduler.py  Execute, WaitExecution and the Operations API over the queue
  botsessions.py the Remote Workers API side: sessions and leases
  farm.py       one process's share of the farm: wiring, start/stop, housekeeping
  localworkers.py the `granary worker` processes `granary serve` starts
"""
