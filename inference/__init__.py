"""The inference room: the engine (served versions, hot reload, the batching queue), photographs
decoded and encoded, and the one colorize pipeline every way in uses. No HTTP here: errors are
plain exceptions (``inference.errors``) that the API maps to status codes."""
