"""The lab's mutations: for every lesson, the careless change (upstream in Dramatiq, or in the lab) that would
make it false. `../shared/tools/mutate` applies each one, runs the tests its README bullet cites, and expects
red: a green run is a lesson whose test has no teeth.

Each part under mutations_by_part/ covers some chapters, and defines MUTATIONS as the tool describes
(name, lesson: a phrase of the bullet, edits: [(target, OLD, NEW)], why). This file gathers them.
"""

import runpy
from pathlib import Path

PARTS = sorted((Path(__file__).resolve().parent / "mutations_by_part").glob("*.py"))
MUTATIONS = [mutation for part in PARTS for mutation in runpy.run_path(str(part))["MUTATIONS"]]
