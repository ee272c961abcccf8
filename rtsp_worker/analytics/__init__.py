"""Analytics stage: tracks in, events out (counting lines and zones per camera, issue 15).

`events.Analytics` is the stage; `lines` and `zones` hold the vectorized geometry of all cameras' lines and
zones; `geometry` the shared tensor helpers. Nothing here imports pipeline, service or cli, and this
`__init__` imports nothing, so `config` may be imported by the modules without a circle.
"""
