"""Protection adapters. In: accepted connections and requests (``guard``: per-source caps, bans) and bytes in
flight (``shaping``: token buckets per connection and leg). Out: refusals and pacing decided by
:mod:`mcs_edge.core.guard` and :mod:`mcs_edge.core.shaping`."""
