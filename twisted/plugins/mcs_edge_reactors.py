from twisted.application.reactors import Reactor

uvloop = Reactor("uvloop", "mcs_edge.reactor", "asyncio reactor on a uvloop event loop (mcs_edge default)")
