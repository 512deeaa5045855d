"""`ember ui`: a web dashboard of nodes, jobs, rounds and actor logs, pushed live to the page.

Just another client of the bus (`ember.ui.hub`) and of the manager's requests; pages are
server-rendered (`ember.ui.pages`), updated by server-sent events (`ember.ui.app`) and a small
script (`static/ember.js`).
"""
