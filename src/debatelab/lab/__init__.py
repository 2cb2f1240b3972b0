"""The mitigation lab: methods that help agents keep their views, compared on one protocol.

:mod:`.config` (the lab file), :mod:`.run` (the runs, stance scoring, the comparison),
:mod:`.measures` (the metric table), :mod:`.quality` (reply quality), :mod:`.forest` (the plot).
"""
