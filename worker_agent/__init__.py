"""venus-worker: a sealing worker agent with a Unix-socket control API.

Layers, imports pointing down only:

    cli  ->  client                      (the operator's side of the socket)
    cli  ->  daemon -> server -> protocol
                    -> service -> thread -> processors, store, states, config
"""

__version__ = "0.1.0"
