"""The web dashboard on the HTTP port: routes.py registers it; static/ holds its page, script and style."""
