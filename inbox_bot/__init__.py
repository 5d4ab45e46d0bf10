"""inbox-bot: turns a privacy-inquiries mailbox into tracked, deadline-aware cases.

Data flow (one module per stage):
source -> parse -> screen -> classify -> route -> cases -> outbox,
plus deadlines (pure date rules), digests and jobs (the scheduler).
"""

__version__ = "0.1.0"
