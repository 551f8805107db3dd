"""`granary worker`: a Remote Workers API bot that runs REAPI actions.

The lease contract is granary.execution.leases (shared with the Bots service).

The pieces, each in its own module:

  bot.py        the bot session loop (CreateBotSession / UpdateBotSession, leases)
  execute.py    one action end to end: fetch, materialise, run, upload
  remote_cas.py the server's CAS as the worker uses it (batches, ByteStream)
  local_cas.py  the worker's content-addressed file cache (verified, LRU-bounded)
  inputs.py     fetching the input tree and materialising it from the cache
  process.py    running the command: process group, timeout, cancellation
  sandbox.py    plain processes or bubblewrap
  outputs.py    collecting outputs into an ActionResult
  paths.py      path checks: nothing escapes the input root
  platform.py   the platform properties the worker advertises
  main.py       wiring, signals, shutdown
"""
