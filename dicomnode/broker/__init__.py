"""Scale-out: jobs move between the node and ``dicomnode worker`` processes through Redis,
with Dramatiq (``[broker]`` in the config; off by default: one process, SQLite only).

- ``messages.py``   what travels: an AnalysisRequest (node -> worker) and an AnalysisReply
                    (worker -> node), frozen dataclasses with encode/decode
- ``transport.py``  the Dramatiq Redis broker: send a message, consume a queue in-process
- ``dispatcher.py`` node side: hands claimed jobs to the broker (a window of them) and
                    records each reply through the queue and delivery (the owners of the
                    job and delivery states)
- ``remote.py``     worker side: loads the bundle once, runs the chain on the series read
                    from the shared data folder, persists the results, replies, then acks

The workers never open the node's SQLite database: the node stays the one owner of every
state; a worker only reads ``storage/`` and writes ``results/.incoming/``.
"""
