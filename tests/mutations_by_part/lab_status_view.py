"""Mutations for the lab's own `status` view (lab/status.py): what the live view keeps on screen."""

STATUS = "lab:lab/status.py"

MUTATIONS = [
    dict(name="status-view-reserves-too-few-lines", lesson="status --watch fits its terminal",
         edits=[(STATUS, "FIXED_LINES = 11", "FIXED_LINES = 5")],
         why="the view counts too few lines for titles and notes, so the dead letters run off a 24-line screen"),
    dict(name="status-view-idle-queues-listed", lesson="status --watch fits its terminal",
         edits=[(STATUS, "fit(len(busy), len(snapshot.alive)", "fit(len(snapshot.queues), len(snapshot.alive)")],
         why="every queue counts as busy, idle ones included, as before the fold"),
    dict(name="status-view-emptiest-first", lesson="status --watch fits its terminal",
         edits=[(STATUS, "key=lambda q: (-(q.ready + q.in_flight + q.dead), q.name))",
                 "key=lambda q: (q.ready + q.in_flight + q.dead, q.name))")],
         why="busy queues sorted emptiest first"),
]
