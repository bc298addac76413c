"""venus-worker: a sealing worker agent with a Unix-socket control API.

Layers, imports pointing down only:

    cli  ->  client                      (the operator's side of the socket)
    cli  ->  daemon -> server -> protocol
                    -> service -> thread -> processors, store, states, config

    api (beside states, pure): the contract with venusctl, which imports it
    too: names, codes, WorkerInfo and the report as typed JSON, durations.
"""

__version__ = "0.1.0"
